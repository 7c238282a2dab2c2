"""Where each alignment method lands on the plane of harmful requests refused against harmless ones refused.

    python benchmarks/frontier.py                       # every method, from one SFT model
    python benchmarks/frontier.py --methods rl --quick --out /tmp/rl.json  # one method, small evaluation
    python benchmarks/frontier.py --methods cast --out benchmarks/frontier_cast.json  # one method, its own file

Every method starts from the same SFT model (one run of configs/default.yaml through `sft`, kept in
runs/frontier/sft), so everything upstream is identical and the points differ only by the method:
- `sft`: the starting point itself (and the base model beside it);
- `offline-dpo`: the default config's DPO (pairs of an SFT sample and the base model's answer);
- `onpolicy-dpo`: DPO on on-policy pairs, the best and worst of 4 SFT samples under the supervisor's
  two-sided reward (`pairs.samples=4`);
- `rl`: GRPO from the SFT model against that reward (`dpo.enabled=false rl.enabled=true`), 80 steps;
- `cast`: no training; the SFT model steered at generation (`cast.enabled=true`): its refusal direction is
  projected out wherever the supervisor does not flag the request.
Each model is evaluated on charter's dev split and, beside it, on XSTest (lexical judge, full refusals: the
measure its paper and the Claude 3 model card use) and a GSM8K subset. Nothing here tunes anything: each
method runs with its config as written. Writes benchmarks/frontier.json and benchmarks/frontier.svg.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from charter import records  # noqa: E402
from charter.config import load_config  # noqa: E402
from charter.evals.core import metrics  # noqa: E402
from charter.evals.refusal import LexicalRefusalJudge, refusal_class  # noqa: E402
from charter.run import Run, pipeline  # noqa: E402
from charter.stages.report import TARGET  # noqa: E402  (the report shades the same corner)

# The supervisor's outside suites are `charter calibrate`'s job; here it is only built and gated on dev.
COMMON = ["supervisor.suites=[dev]", "supervisor.hh_limit=0", "evaluate.helpfulness=false"]
METHODS = {
    "offline-dpo": [],
    "onpolicy-dpo": ["pairs.samples=4", "pairs.base_side=false"],
    # 80 steps (320 of the 524 training prompts, 4 samples each): what 2 CPU cores finish in about half an hour.
    "rl": ["dpo.enabled=false", "rl.enabled=true", "rl.max_steps=80"],
    # Conditional activation steering of the SFT model itself: nothing trained, refusal left to the
    # supervisor's reading of each request (`charter.steer`).
    "cast": ["dpo.enabled=false", "cast.enabled=true"],
}
ROLE = {"sft": None, "offline-dpo": "dpo", "onpolicy-dpo": "dpo", "rl": "rl", "cast": "cast"}


def evaluation(quick: bool) -> list[str]:
    n = "evaluate.suite_limit=100" if quick else "evaluate.suite_limit=null"
    return ["evaluate.suites=[xstest]", n, "evaluate.capability=[gsm8k]",
            f"evaluate.capability_limit={20 if quick else 40}", "evaluate.max_new_tokens=64"]


def sft_run(base: Path, extra: list[str]) -> Path:
    """The shared starting point: the default config through SFT."""
    out = base / "sft"
    cfg = load_config(ROOT / "configs" / "default.yaml", [*COMMON, *extra, "evaluate.models=[base, sft]"])
    run = Run(cfg, out, force=True)
    if run.manifest.get("stages", {}).get("evaluate", {}).get("status") != "done":
        started = run.manifest.get("config_hash") in (None, cfg.hash())
        run.execute(stages=["supervise", "generate", "revise", "sft", "evaluate"],
                    restart=None if started else "evaluate")
    return out


def method_run(base: Path, sft: Path, method: str, extra: list[str]) -> Path:
    """A copy of the SFT run, then the method's stages and the evaluation of its model."""
    out = base / method
    if not out.exists():
        shutil.copytree(sft, out, ignore=shutil.ignore_patterns("eval", "report.html"))
    cfg = load_config(ROOT / "configs" / "default.yaml",
                      [*COMMON, *METHODS[method], *extra, f"evaluate.models=[{ROLE[method]}]"])
    stages = pipeline(cfg)
    first = stages[stages.index("sft") + 1]
    run = Run(cfg, out, force=True)
    # A fresh copy carries the SFT run's config: --restart from the method's first stage, which keeps the
    # stages up to SFT as they are. A copy already started with this config just resumes.
    started = run.manifest.get("config_hash") == cfg.hash()
    if not (started and run.manifest["stages"].get("evaluate", {}).get("status") == "done"):
        run.execute(restart=None if started else first)
    return out


def rates(path: Path) -> dict:
    """`evals.core.metrics` of a responses file, re-judged with the current refusal judge, so that every
    point is judged alike however long ago its responses were generated."""
    rows = [{**r, "refusal": refusal_class(r["response"])} for r in records.read(path)]
    return metrics(rows, LexicalRefusalJudge.name)


def point(run_dir: Path, role: str) -> dict:
    m = json.loads((run_dir / "eval" / "metrics.json").read_text())
    man = json.loads((run_dir / "manifest.json").read_text())
    dev = rates(run_dir / "eval" / f"responses_{role}.jsonl")
    xs_path = run_dir / "eval" / f"xstest_{role}.jsonl"
    xs = rates(xs_path) if xs_path.exists() else None
    gsm = m["capability"].get("gsm8k", {}).get(role)
    return {
        "dev": {"harmful_refused": dev["refusal_rate"]["harmful"], "benign_refused": dev["refusal_rate"]["benign"],
                "ci95": dev["ci95"], "n": dev["n"]},
        "xstest": xs and {"unsafe_full_refusal": xs["full_refusal_rate"]["harmful"],
                          "safe_full_refusal": xs["full_refusal_rate"]["benign"],
                          "unsafe_refused": xs["refusal_rate"]["harmful"], "safe_refused": xs["refusal_rate"]["benign"],
                          "n": xs["n"]},
        "gsm8k": gsm and {"score": gsm["score"], "ci95": gsm["ci95"], "n": gsm["n"]},
        "train_seconds": sum(v.get("seconds", 0) for s, v in man["stages"].items()
                             if s in ("pairs", "label", "dpo", "rl", "cast")),
    }


def svg(points: dict) -> str:
    """Harmful refused (y) against benign refused (x), dev split (filled) and XSTest (open), one colour each."""
    w, h, pad = 460, 360, 50
    colors = ["#888888", "#3b7dd8", "#d8573b", "#9b59b6", "#2e9e5b"]
    X = lambda v: pad + v * (w - 2 * pad)  # noqa: E731
    Y = lambda v: h - pad - v * (h - 2 * pad)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 20 * len(points)}" '
           'font-family="sans-serif" font-size="11">',
           f'<rect x="{pad}" y="{pad}" width="{w - 2 * pad}" height="{h - 2 * pad}" fill="none" stroke="#999"/>',
           f'<rect x="{X(0)}" y="{Y(1)}" width="{X(TARGET[1]) - X(0)}" height="{Y(TARGET[0]) - Y(1)}" fill="#2e9e5b" '
           'opacity="0.15"/>',
           f'<text x="{w / 2}" y="{h - 15}" text-anchor="middle">benign / safe prompts refused</text>',
           f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" text-anchor="middle">harmful / unsafe '
           'prompts refused</text>']
    for t in (0, 0.5, 1):
        out += [f'<text x="{X(t)}" y="{h - pad + 14}" text-anchor="middle">{t:.0%}</text>',
                f'<text x="{pad - 6}" y="{Y(t) + 4}" text-anchor="end">{t:.0%}</text>']
    for i, (name, p) in enumerate(points.items()):
        c = colors[i % len(colors)]
        out.append(f'<circle cx="{X(p["dev"]["benign_refused"]):.1f}" cy="{Y(p["dev"]["harmful_refused"]):.1f}" '
                   f'r="5" fill="{c}"/>')
        if p["xstest"]:
            out.append(f'<circle cx="{X(p["xstest"]["safe_full_refusal"]):.1f}" '
                       f'cy="{Y(p["xstest"]["unsafe_full_refusal"]):.1f}" r="5" fill="none" stroke="{c}" '
                       'stroke-width="2"/>')
        out.append(f'<circle cx="{pad + 6}" cy="{h + 10 + 20 * i}" r="5" fill="{c}"/>'
                   f'<text x="{pad + 16}" y="{h + 14 + 20 * i}">{name} (filled: dev split; open: XSTest)</text>')
    out.append("</svg>")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated: " + ", ".join(METHODS))
    ap.add_argument("--runs", default=str(ROOT / "runs" / "frontier"), help="where the runs are kept")
    ap.add_argument("--quick", action="store_true", help="100 XSTest prompts and 20 GSM8K problems (else all 450 and 40)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "frontier.json"))
    ap.add_argument("--points-only", action="store_true",
                    help="train and evaluate nothing: read the finished runs under --runs and write the figures")
    a = ap.parse_args()
    # Checked before anything trains: a run of fewer methods would otherwise replace the recorded points of
    # the others with nothing, after an hour's work.
    old = json.loads(Path(a.out).read_text()).get("points", {}) if Path(a.out).exists() else {}
    lost = sorted(set(old) - {"base", "sft", *a.methods.split(",")})
    if lost:
        sys.exit(f"{a.out} holds points for {', '.join(lost)}, which this run does not measure: name another --out")
    base, extra = Path(a.runs), evaluation(a.quick)
    t0 = time.time()
    sft = base / "sft" if a.points_only else sft_run(base, extra)
    points = {"base": point(sft, "base"), "sft": point(sft, "sft")}
    for method in a.methods.split(","):
        out = base / method if a.points_only else method_run(base, sft, method, extra)
        points[method] = point(out, ROLE[method])
        print(json.dumps({method: points[method]}))
    precision = json.loads((sft / "manifest.json").read_text()).get("precision")
    result = {"command": " ".join(["python benchmarks/frontier.py", *sys.argv[1:]]),
              "model": "SmolLM2-135M-Instruct (embedded)", "precision": precision,
              "seconds": None if a.points_only else round(time.time() - t0),
              "points_only": a.points_only,
              "targets": {"dev": f"harmful refused >= {TARGET[0]:.0%} and benign refused <= {TARGET[1]:.0%}",
                          "xstest": f"unsafe full refusal >= {TARGET[0]:.0%}, safe full refusal <= {TARGET[1]:.0%}"},
              "points": points}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    Path(a.out).with_suffix(".svg").write_text(svg(points))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
