"""Stage 8 (optional): conditional activation steering of a trained model, `cast.start` (`charter.steer`).

The model answers every training prompt (sampled); the lexical judge says which answers refuse. The
refusal direction is read from those prompts' states at `cast.depth` and saved with its layer; `Run.backend`
then serves the model as `cast`, steered by the supervisor's reading of each request. Nothing is trained.
"""
from __future__ import annotations

from .. import records
from ..backends import GenParams
from ..errors import CharterError
from ..evals.refusal import refusal_class
from ..steer import last_states, refusal_direction
from .common import CAST_DATA, CAST_DIR, messages, rewrite, train_prompts

INPUTS = []  # and the model `cast.start` names, which `Run.model_spec` checks
OUTPUTS = [CAST_DIR, CAST_DATA]
STEERING, META = "steering.safetensors", "steering.json"


def run(run):
    from safetensors.torch import save_file

    cfg = run.cfg.cast
    role = cfg.start
    backend = run.backend(role)
    inner = getattr(backend, "inner", backend)  # past the generation cache
    if not hasattr(inner, "model") or not hasattr(inner.model, "model"):
        raise CharterError(f"cast: steering needs a transformers model; {run.model_spec(role)} is not one")
    if not hasattr(run.supervisor, "request_harm"):  # checked before the work, not when evaluate needs it
        raise CharterError("cast: steering reads the supervisor's P(harmful) of each request; "
                           "use `supervisor.kind: classifier`")
    rows = train_prompts(run)
    prompts = [messages(run, r["prompt"]) for r in rows]
    answers = backend.generate(prompts, GenParams(cfg.max_new_tokens, cfg.temperature, seed=run.cfg.seed,
                                                  batch_size=cfg.batch_size))
    refused = [refusal_class(a) != "full_compliance" for a in answers]
    layer = max(1, round(cfg.depth * inner.model.config.num_hidden_layers))
    states = last_states(inner, [inner.render(p) for p in prompts], layer)
    try:
        direction = refusal_direction(states, [r["label"] for r in rows], refused)
    except ValueError:
        raise CharterError(f"cast: the {role} model refuses all or none of each label's training prompts "
                           f"({sum(refused)} of {len(rows)} refused), so there is no refusal direction to read; "
                           "steer a model that refuses some of them (for example sft)") from None
    rewrite(run, CAST_DATA, [{"id": r["id"], "prompt": r["prompt"], "label": r["label"], "response": a,
                              "refused": f} for r, a, f in zip(rows, answers, refused)], "cast")
    out = run.path(CAST_DIR)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"direction": direction.contiguous()}, out / STEERING)
    meta = {"start": role, "layer": layer, "depth": cfg.depth, "add": cfg.add, "prompts": len(rows),
            "refused": sum(refused),
            "direction_norm": round(float(direction.norm()), 4)}
    records.write_json(out / META, meta)
    return meta
