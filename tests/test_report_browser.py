"""Open a report in headless Chromium: no console errors, every figure laid out, a screenshot kept."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from charter import records

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

PROBE = """<script>
window.addEventListener('load', function () {
  var figs = Array.prototype.slice.call(document.querySelectorAll('svg.figure'));
  var sizes = figs.map(function (f) { var b = f.getBBox(); return [Math.round(b.width), Math.round(b.height)]; });
  document.title = 'PROBE ' + JSON.stringify(sizes);
});
</script>"""


class FakeRun:
    """Enough of a run directory for the report stage, built from fixed records."""

    def __init__(self, tmp):
        from charter.config import RunConfig
        from charter.constitution import load_constitution

        self.dir, self.cfg, self.constitution = tmp, RunConfig(), load_constitution("default")
        self.manifest = {"stages": {"sft": {"status": "done", "seconds": 1.0, "steps": 3}}}
        rows = {"base": ["full_compliance", "full_compliance", "full_compliance"],
                "dpo": ["full_refusal", "partial_refusal", "full_compliance"]}
        models = {}
        for role, classes in rows.items():
            recs = [{"id": f"p{i}", "prompt": f"prompt {i} <b>", "label": "harmful" if i < 2 else "benign",
                     "category": "weapons" if i < 2 else "cooking", "response": f"{role} says {c}", "refusal": c,
                     "harm": 0.5}
                    for i, c in enumerate(classes)]
            records.append(self.path("eval", f"responses_{role}.jsonl"), recs)
            from charter.evals.core import metrics

            models[role] = metrics(recs, "lexical")
        from charter.stages.evaluate import examples

        records.write_json(self.path("eval", "metrics.json"),
                           {"train_eval_overlap": 0, "models": models,
                            "suites": {"xstest": models}, "suite_overlap": {"xstest": 0},
                            "capability": {"gsm8k": {r: {"suite": "gsm8k", "n": 2, "score": 0.5, "ci95": [0.1, 0.9],
                                                         "metric": "exact match"} for r in models}},
                            "helpfulness": {"dpo": {"n": 1, "win_rate": 0.4, "length_controlled": 0.45}},
                            "examples": examples(self, list(models))})
        acc = {"n": 10, "accuracy": 0.9}
        records.write_json(self.path("supervisor", "calibration.json"), {
            "supervisor": "fake", "contrast": {"harmful": acc, "benign": acc, "overall": acc}, "position_bias": 0.1,
            "ece": 0.05, "pairs_per_s": 3.0, "passed": True, "reasons": []})
        from charter.errors import CharterError
        from charter.evals.refusal_calibration import calibrate_refusal

        try:
            refusal = calibrate_refusal(limit=200)
        except CharterError as e:  # no XSTest completions here: the report says why
            refusal = {"skipped": str(e)}
        records.write_json(self.path("eval", "refusal_calibration.json"), refusal)

    def path(self, *parts):
        return self.dir.joinpath(*parts)

    @property
    def supervisor(self):
        from charter.backends import get_backend
        from charter.supervise.llm_judge import LLMJudge

        return LLMJudge(get_backend("fake"), self.constitution)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    from charter.stages import report

    run = FakeRun(tmp_path)
    report.run(run)
    html = run.path("report.html").read_text()
    assert "<script" not in html and not re.search(r"(src|href)=\"https?:", html)  # self-contained
    for needle in ("supervisor: P(dpo better) = ", "xstest: harmful refused", "xstest: harmfulness", "gsm8k: exact match", "40.0% (45.0%)"):
        assert needle in html, needle
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE + "</body>"))
    profile = tmp_path / "profile"
    r = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                        "--virtual-time-budget=3000", "--dump-dom", probe.as_uri()],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r"<title>PROBE (\[.*?\])</title>", r.stdout)
    assert m, r.stderr[-2000:]
    sizes = json.loads(m.group(1))
    assert len(sizes) == 2 and all(w > 50 and h > 50 for w, h in sizes), sizes
    console = [l for l in r.stderr.splitlines() if "CONSOLE" in l and "probe" not in l.lower()]
    assert not console, console
    shot = ROOT / "test-artifacts" / "report.png"
    shot.parent.mkdir(exist_ok=True)
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1100,1800",
                    run.path("report.html").as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000
