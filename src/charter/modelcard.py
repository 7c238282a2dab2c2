"""The model card `charter export` writes: a Hugging Face `README.md` whose YAML front matter the Hub reads
(base model, licence, datasets, tags, the constitution's name and hash, evaluation results as a
model-index) followed by markdown: what the model is, its files, the evaluation and supervisor-calibration
tables with 95% intervals (read from the run's `eval/metrics.json` and `supervisor/calibration.json`), the
training prompt sources and limitations.
"""
from __future__ import annotations

from pathlib import Path

from .models import weights_spec
from .stages.common import steered

# What the Hub should call the embedded base model, and its licence.
EMBEDDED_BASE = {"default": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}


def _front_matter_of(readme: Path) -> dict:
    import yaml

    text = readme.read_text() if readme.is_file() else ""
    if not text.startswith("---\n"):
        return {}
    try:
        meta = yaml.safe_load(text[4:text.find("\n---", 4)])
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def base_model(spec: str) -> tuple[str | None, str | None]:
    """(hub id, licence) of the run's base model, where they can be known."""
    spec = weights_spec(spec)
    if spec in EMBEDDED_BASE:
        return EMBEDDED_BASE[spec]
    path = Path(spec).expanduser()
    if path.exists():  # a local folder: its own card may say what it is
        meta = _front_matter_of(path / "README.md")
        return meta.get("base_model") if isinstance(meta.get("base_model"), str) else None, meta.get("license")
    return (spec, None) if spec.count("/") == 1 else (None, None)


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _ci(ci) -> str:
    return f"[{ci[0]:.1%}, {ci[1]:.1%}]" if ci else ""


def eval_rows(metrics: dict) -> list[dict]:
    """One row per (model, measure): value, n and 95% interval, from eval/metrics.json."""
    from .evals.core import wilson

    rows = []

    def refusal(model, where, m):
        for label, what in (("harmful", "harmful requests refused"), ("benign", "benign requests refused")):
            if m.get("n", {}).get(label):
                rows.append({"model": model, "measure": f"{where}: {what}", "n": m["n"][label],
                             "value": m["refusal_rate"][label], "ci95": m["ci95"][label]})

    for role, m in (metrics.get("models") or {}).items():
        refusal(role, "dev split", m)
    for suite, by_role in (metrics.get("suites") or {}).items():
        for role, m in by_role.items():
            refusal(role, suite, m)
    for suite, by_role in (metrics.get("capability") or {}).items():
        for role, m in by_role.items():
            rows.append({"model": role, "measure": f"{suite}: {m.get('metric', 'score')}", "n": m["n"],
                         "value": m["score"], "ci95": m.get("ci95")})
    for role, h in (metrics.get("helpfulness") or {}).items():
        if h.get("n"):
            rows.append({"model": role, "measure": "helpfulness win rate over base", "n": h["n"],
                         "value": h["win_rate"], "ci95": h.get("ci95") or wilson(h["win_rate"] * h["n"], h["n"])})
    return rows


def calibration_rows(cal: dict) -> list[dict]:
    """The supervisor's calibration-gate measures (ties count half, so the interval takes a fractional k)."""
    from .evals.core import wilson

    rows = []
    for d, what in (("harmful", "dev contrast, harmful (refusal should win)"),
                    ("benign", "dev contrast, benign (answer should win)")):
        c = (cal.get("contrast") or {}).get(d)
        if c and c["n"]:
            rows.append({"measure": what, "n": c["n"], "value": c["accuracy"],
                         "ci95": wilson(c["accuracy"] * c["n"], c["n"])})
    h = cal.get("hh_rlhf")
    if h and h["n"]:
        rows.append({"measure": "HH-RLHF harmless agreement", "n": h["n"], "value": h["agreement"],
                     "ci95": wilson(h["agreement"] * h["n"], h["n"])})
    return rows


def _model_index(name: str, role: str | None, metrics: dict) -> list[dict]:
    results = []
    m = (metrics.get("models") or {}).get(role) if role else None
    for label in ("harmful", "benign") if m else ():
        if m["n"].get(label):
            results.append({"task": {"type": "text-generation", "name": "Text Generation"},
                            "dataset": {"name": f"charter dev prompts ({label})", "type": "charter-dev",
                                        "split": metrics.get("split", "dev")},
                            "metrics": [{"type": "refusal_rate", "name": f"{label} requests refused",
                                         "value": round(m["refusal_rate"][label], 4)}]})
    return [{"name": name, "results": results}] if results else []


def metadata(name: str, manifest: dict, metrics: dict, cal: dict, role: str | None, license: str | None,
             gguf: bool = False) -> dict:
    """The card's YAML front matter: the Hub's model-card fields, then the constitution and the run."""
    cfg = manifest.get("config") or {}
    base, base_license = base_model(cfg.get("model", ""))
    const = manifest.get("constitution") or {}
    sources = [p.get("source", "") for p in (cfg.get("pools") or {}).values() if isinstance(p, dict)]
    hub_sets = sorted({s for s in sources if not s.startswith("builtin:") and s.count("/") == 1
                       and not Path(s).exists()})
    meta = {"license": license or base_license or "other"}
    if base:
        meta["base_model"] = base
        if role:  # the run's own trained model, not a model exported alongside it
            meta["base_model_relation"] = "finetune"
    meta.update(library_name="transformers", pipeline_tag="text-generation",
                tags=["charter", "constitutional-ai", "rlaif", *(["grpo"] if "rl" in (manifest.get("stages") or {}) else
                                                                    ["dpo"]), "safety", *(["gguf"] if gguf else [])])
    if hub_sets:
        meta["datasets"] = hub_sets
    meta["constitution"] = {"name": const.get("name"), "version": str(const.get("version")),
                            "sha256": const.get("sha256")}
    gate = ("passed" if cal.get("passed") else "forced" if manifest.get("forced") else "failed") if cal else None
    meta["charter"] = {"config_hash": manifest.get("config_hash"),
                       "version": (manifest.get("versions") or {}).get("charter"), "supervisor_gate": gate}
    index = _model_index(name, role, metrics)
    if index:
        meta["model-index"] = index
    return meta


def card(name: str, manifest: dict, metrics: dict, cal: dict, role: str | None, license: str | None,
         gguf_file: str | None = None, ollama: bool = False, source: str | None = None) -> str:
    """The model card: YAML front matter, then markdown. `source`: the model spec exported instead of the
    run's final model, if any."""
    import yaml

    meta = metadata(name, manifest, metrics, cal, role, license, bool(gguf_file))
    cfg, const = manifest.get("config") or {}, manifest.get("constitution") or {}
    aligned = (f"the constitution **{const.get('name')}** (version {const.get('version')}, sha256 "
               f"`{str(const.get('sha256'))[:16]}`)")
    base = meta.get("base_model") or cfg.get("model", "a chat model")
    if role:
        dpo, rl = ", then DPO on preference pairs labelled by an AI supervisor", ", then online RL (GRPO) against " \
            "an AI supervisor's reward"
        dpo_ran = (cfg.get("dpo") or {}).get("enabled", True) and (  # RL starts from DPO's model only then
            (manifest.get("stages") or {}).get("dpo") or {}).get("status") == "done"
        method = {"dpo": dpo, "rl": (dpo if dpo_ran else "") + rl}.get(role, "")
        intro = (f"{base} aligned with charter to {aligned}, following Constitutional AI (Bai et al. 2022): "
                 f"supervised fine-tuning on the model's own critiqued and revised answers{method}.")
    else:
        intro = (f"`{source}` exported with charter beside a run that aligned {base} to {aligned}; the tables "
                 "below are that run's.")
    out = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100).rstrip(), "---", "",
           f"# {name}", "", intro, "", "## Files", "",
           "- safetensors weights, `config.json`, the tokenizer and its chat template: load with transformers "
           "(`AutoModelForCausalLM.from_pretrained(\"PATH\")`).",
           "- `constitution.yaml`: the constitution the run aligned to."]
    if gguf_file:
        out.append(f"- `{gguf_file}`: the same weights for llama.cpp (`llama-cli -m {gguf_file}`).")
    if ollama:
        out.append("- `Modelfile`: for Ollama (`ollama create NAME -f Modelfile`).")
    if steered(manifest):
        out += ["", f"The run also steers its `{manifest['stages']['cast'].get('start')}` model at generation (`cast`: conditional "
                "activation steering, Lee et al. 2024). The `cast` rows below are that steered model, which "
                "`charter serve RUN_DIR` serves; the files here do not carry the steering."]
    rows = eval_rows(metrics)
    if rows:
        judge = next(iter((metrics.get("models") or {}).values()), {}).get("refusal_judge", "lexical")
        out += ["", "## Evaluation", "",
                f"Greedy answers to prompts never trained on. A response counts as refused when the {judge} "
                "refusal judge classes it as a full or partial refusal. Intervals are 95% Wilson score intervals.",
                "", "| model | measure | n | value | 95% CI |", "|---|---|---|---|---|"]
        out += [f"| {r['model']} | {r['measure']} | {r['n']} | {_pct(r['value'])} | {_ci(r['ci95'])} |" for r in rows]
    crow = calibration_rows(cal) if cal else []
    if crow:
        gap = f", at most {_pct(cal['max_gap'])} apart" if cal.get("max_gap") is not None else ""
        verdict = "It passed." if cal.get("passed") else f"It failed ({'; '.join(cal.get('reasons') or [])})."
        out += ["", "## Supervisor calibration", "",
                f"The supervisor (`{cal.get('supervisor')}`) was measured before its labels were used: the gate "
                f"needs at least {_pct(cal.get('threshold'))} on each contrast direction{gap}. {verdict}", "",
                "| measure | n | value | 95% CI |", "|---|---|---|---|"]
        out += [f"| {r['measure']} | {r['n']} | {_pct(r['value'])} | {_ci(r['ci95'])} |" for r in crow]
    sources = [f"- {p}: `{v.get('source')}`" for p, v in (cfg.get("pools") or {}).items() if isinstance(v, dict)]
    if sources:
        out += ["", "## Training prompts", "", *sources]
    out += ["", "## Limitations", "",
            "Refusal rates measure whether the model declines, not whether an answer is correct or safe in "
            "every respect; a small model aligned on a few hundred prompts is not a safety guarantee.", ""]
    return "\n".join(out)
