"""`charter run | eval | judge | calibrate | compare | family`: one table of subcommand -> function.

User mistakes raise `CharterError` and print one line naming the file:line or
key, with exit status 2 and no traceback.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from pathlib import Path

from .errors import CharterError


def cmd_run(a):
    from .config import load_config
    from .run import Run

    overrides = list(a.overrides)
    if a.ray:  # the executor is not part of the config hash, so a run may switch to Ray and resume
        overrides += ["executor.kind=ray", f"executor.address={a.ray}"]
    cfg = load_config(a.config, overrides)
    run = Run(cfg, a.out, force=a.force)
    if a.stages:
        from .run import STAGES

        unknown = [x for x in a.stages if x not in STAGES]
        if unknown:
            raise CharterError(f"--stages: unknown stage(s) {', '.join(unknown)} (stages: {', '.join(STAGES)})")
    m = run.execute(stages=a.stages, restart=a.restart)
    print(f"run finished: {a.out} (final model: {m.get('final_model')})")
    metrics = run.path("eval", "metrics.json")
    if metrics.exists():
        for role, v in json.loads(metrics.read_text())["models"].items():
            print(f"  {role:5s} harmful refused {_pct(v['refusal_rate']['harmful'])}  "
                  f"benign refused {_pct(v['refusal_rate']['benign'])}")


def _pct(x):
    return "n/a" if x is None else f"{x:.1%}"


def cmd_eval(a):
    from .backends import get_backend
    from .evals.core import evaluate
    from .prompts import dev_prompts, read_prompt_file
    from .records import write_json

    prompts = read_prompt_file(a.prompts) if a.prompts else dev_prompts(limit=a.limit)
    if a.prompts and a.limit:
        prompts = prompts[: a.limit]
    if not prompts:
        raise CharterError(f"{a.prompts}: no prompts")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = a.model
    run_manifest = Path(model) / "manifest.json"
    if run_manifest.exists():  # a run directory: evaluate its final model
        final = json.loads(run_manifest.read_text()).get("final_model")
        if not final:
            raise CharterError(f"{run_manifest}: the run has no final model yet")
        model = str(Path(model) / final)
    backend = get_backend(model, device=a.device)
    m = evaluate(backend, prompts, out / "responses.jsonl", a.max_new_tokens, a.batch_size, system=a.system)
    m["model"] = a.model
    write_json(out / "metrics.json", m)
    print(f"harmful refused {_pct(m['refusal_rate']['harmful'])} (n={m['n']['harmful']}), "
          f"benign refused {_pct(m['refusal_rate']['benign'])} (n={m['n']['benign']}); judge {m['refusal_judge']}")


def _load_pairs(path):
    from .yamlio import read_jsonl
    from .errors import where

    rows = read_jsonl(path)
    seen = {}
    for r in rows:
        loc = where(path, r["_line"])
        for k in ("id", "prompt", "a", "b"):
            if k not in r:
                raise CharterError(f"{loc}: missing field {k!r}")
        for k in ("prompt", "a", "b"):
            if not isinstance(r[k], str):
                raise CharterError(f"{loc}: {k!r} must be a string")
        if not isinstance(r["id"], (str, int)) or isinstance(r["id"], bool):
            raise CharterError(f"{loc}: 'id' must be a string or integer")
        if r["id"] in seen:
            raise CharterError(f"{loc}: duplicate id {r['id']!r} (first at line {seen[r['id']]})")
        seen[r["id"]] = r["_line"]
    if not rows:
        raise CharterError(f"{path}: no pairs")
    return rows


def cmd_judge(a):
    from .records import append
    from .supervise import get_supervisor

    rows = _load_pairs(a.pairs)
    sup = get_supervisor(a.supervisor, device=a.device)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.unlink(missing_ok=True)
    for i in range(0, len(rows), 64):
        chunk = rows[i:i + 64]
        vs = sup.judge(chunk)
        append(tmp, [{**{k: v for k, v in r.items() if k != "_line"}, **v, "supervisor": sup.name}
                     for r, v in zip(chunk, vs)])
    os.replace(tmp, out)
    print(f"labelled {len(rows)} pairs with {sup.name} -> {out}")


def cmd_calibrate(a):
    from .records import write_json

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.refusal:
        from .evals.refusal import get_refusal_judge
        from .evals.refusal_calibration import calibrate_refusal, refusal_table

        res = calibrate_refusal(a.xstest, get_refusal_judge(a.judge, a.device), a.limit)
        write_json(out / "refusal_calibration.json", res)
        text = refusal_table(res)
        (out / "refusal_calibration.md").write_text(text + "\n")
        print(text)
        return
    from .supervise import get_supervisor
    from .supervise.calibrate import calibrate, table

    sup = get_supervisor(a.supervisor, device=a.device)
    res = calibrate(sup, hh_path=a.hh, hh_limit=a.hh_limit)
    res["threshold"] = a.threshold
    res["passed"] = res["gate_accuracy"] >= a.threshold
    write_json(out / "calibration.json", res)
    (out / "calibration.md").write_text(table(res) + "\n")
    print(table(res))
    print(f"gate ({a.threshold:.0%} on each direction): {'PASSED' if res['passed'] else 'FAILED'}")


def cmd_compare(a):
    from .evals.compare import compare

    harm = None
    if a.harm:
        from .supervise import get_supervisor

        scorer = getattr(get_supervisor(a.harm), "harm_scorer", None)
        if scorer is None:
            raise CharterError(f"--harm {a.harm}: only a classifier supervisor can score harmfulness")
        harm = scorer()
    res = compare(a.models, a.suite, a.out, a.limit, a.max_new_tokens, a.batch_size, a.device, harm, a.by_category)
    print((Path(a.out) / "table.md").read_text(), end="")
    print(f"{len(res['models'])} models x {len(a.suite)} suites -> {a.out}/table.{{md,html,csv}}")


def cmd_lm_eval(a):
    """Hand a model to lm-evaluation-harness, the standard implementation of capability benchmarks."""
    import shutil
    import subprocess

    from .evals.compare import resolve
    from .models import resolve_model

    exe = shutil.which("lm_eval")
    if exe is None:
        raise CharterError("lm-evaluation-harness is not installed: `pip install lm-eval` (its tasks download "
                           "data from the hub, so this needs network access)")
    model = resolve_model(resolve(a.model)[1])
    cmd = [exe, "--model", "hf", "--model_args", f"pretrained={model}", "--tasks", a.tasks,
           "--output_path", a.out, *(["--limit", str(a.limit)] if a.limit else [])]
    print("running:", " ".join(cmd))
    raise SystemExit(subprocess.call(cmd))


def cmd_family(a):
    from .family import run_family

    res = run_family(a.config, a.out, force=a.force)
    print((Path(a.out) / "compare" / "table.md").read_text(), end="")
    print(f"{len(res['models'])} columns -> {a.out}/compare/table.{{md,html,csv}}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="charter", description="Align a chat model to a constitution with AI feedback.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run the pipeline (resumes an existing run directory)")
    r.add_argument("config")
    r.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sft.max_steps=10")
    r.add_argument("--out", required=True, help="run directory")
    r.add_argument("--force", action="store_true", help="label even if the supervisor failed its gate (recorded)")
    r.add_argument("--restart", metavar="STAGE", help="redo STAGE and every stage after it")
    r.add_argument("--stages", nargs="+", metavar="STAGE",
                   help="run only these stages (e.g. under accelerate launch: --stages sft dpo)")
    r.add_argument("--ray", metavar="ADDRESS",
                   help="shard generation, revision, labelling and evaluation over Ray workers: "
                        "local, auto, HOST:PORT or ray://HOST:PORT (same as executor.kind=ray executor.address=...)")
    r.set_defaults(fn=cmd_run)

    e = sub.add_parser("eval", help="refusal rates of a model on labelled prompts")
    e.add_argument("--model", required=True, help="default, hub id, folder, .gguf, or a run directory")
    e.add_argument("--prompts", help="JSONL lines {id, prompt, label: harmful|benign, category?} (default: dev split)")
    e.add_argument("--out", required=True)
    e.add_argument("--limit", type=int)
    e.add_argument("--max-new-tokens", type=int, default=96)
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--system")
    e.add_argument("--device", default="auto")
    e.set_defaults(fn=cmd_eval)

    j = sub.add_parser("judge", help="label response pairs with a supervisor")
    j.add_argument("--supervisor", default="default")
    j.add_argument("--pairs", required=True, help="JSONL lines {id, prompt, a, b}")
    j.add_argument("--out", required=True)
    j.add_argument("--device", default="auto")
    j.set_defaults(fn=cmd_judge)

    c = sub.add_parser("calibrate", help="measure a supervisor (or, with --refusal, the refusal judge)")
    c.add_argument("--supervisor", default="default")
    c.add_argument("--out", required=True)
    c.add_argument("--threshold", type=float, default=0.9)
    c.add_argument("--hh", help="HH-RLHF harmless test file (default: shared data)")
    c.add_argument("--hh-limit", type=int, default=200)
    c.add_argument("--refusal", action="store_true", help="calibrate the refusal judge on XSTest human labels")
    c.add_argument("--xstest", help="folder of XSTest model_completions CSVs (default: shared data)")
    c.add_argument("--judge", default="lexical", help="refusal judge for --refusal: lexical or llm:MODEL")
    c.add_argument("--limit", type=int, help="--refusal: score a seeded sample of this many completions")
    c.add_argument("--device", default="auto")
    c.set_defaults(fn=cmd_calibrate)
    k = sub.add_parser("compare", help="several models or runs on the same suites, one table")
    k.add_argument("models", nargs="+", help="run directories, model folders, .gguf files, hub ids, default")
    k.add_argument("--suite", nargs="+", required=True,
                   help="dev, xstest, strongreject, harmbench, advbench, gsm8k, humaneval, or a prompt JSONL file")
    k.add_argument("--out", required=True)
    k.add_argument("--limit", type=int, help="at most this many prompts per suite")
    k.add_argument("--max-new-tokens", type=int, default=96)
    k.add_argument("--batch-size", type=int, default=16)
    k.add_argument("--device", default="auto")
    k.add_argument("--harm", metavar="SUPERVISOR", help="score harmfulness of responses with this classifier "
                   "supervisor (e.g. default)")
    k.add_argument("--by-category", action="store_true", help="also one row per category (e.g. XSTest types)")
    k.set_defaults(fn=cmd_compare)

    h = sub.add_parser("lm-eval", help="run lm-evaluation-harness on a model or run (needs lm-eval and network)")
    h.add_argument("--model", required=True, help="default, a run directory, a model folder, .gguf or hub id")
    h.add_argument("--tasks", required=True, help="comma-separated lm-eval tasks, e.g. gsm8k,mmlu")
    h.add_argument("--out", required=True)
    h.add_argument("--limit", type=int)
    h.set_defaults(fn=cmd_lm_eval)

    f = sub.add_parser("family", help="run one config over several base models, then compare them")
    f.add_argument("config", help="a family config, e.g. configs/family.yaml")
    f.add_argument("--out", required=True)
    f.add_argument("--force", action="store_true", help="label even if a supervisor failed its gate (recorded)")
    f.set_defaults(fn=cmd_family)
    return p


def main(argv=None) -> int:
    p = parser()
    a, extra = p.parse_known_args(argv)
    # Overrides may follow options (`run CFG --out DIR k=v`); argparse leaves those over.
    bad = [x for x in extra if a.cmd != "run" or x.startswith("-") or "=" not in x]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)}")
    if a.cmd == "run":
        # `--stages sft dpo k=v` leaves the overrides inside --stages' list: move them back.
        moved = [x for x in (a.stages or []) if "=" in x]
        a.stages = [x for x in (a.stages or []) if "=" not in x] or None
        a.overrides = list(a.overrides) + extra + moved
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format="charter: %(message)s")
    for name in ("transformers", "datasets", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        a.fn(a)
    except CharterError as e:
        print(f"charter: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno == errno.ENOSPC:
            print(f"charter: error: no space left on device writing {e.filename or ''}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("charter: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
