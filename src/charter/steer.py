"""Conditional activation steering (CAST; Lee et al. 2024, arXiv 2409.05907): refuse only where the
supervisor reads the request as harmful, by editing the model's activations instead of its weights.

The refusal direction is a difference of means (Arditi et al. 2024, arXiv 2406.11717): the state at the
generation prompt of training prompts the model refused, minus that of prompts it answered. It is taken
within each label and averaged, so that it is the direction of *refusing*, not of the request being harmful.
At generation, a request the supervisor does not flag has that direction projected out of the residual
stream from its layer on, so the model cannot take its refusal habit there; a flagged request has the
direction added at that layer (`add` times it), so the model takes it. Where refusal is decided is then the
supervisor's call, the condition CAST reads.
"""
from __future__ import annotations

import contextlib

import torch

from .backends.base import GenParams


def last_states(backend, texts, layer: int, batch_size: int = 32) -> torch.Tensor:
    """Hidden state at the last token of each rendered prompt, after `layer` decoder layers (float32)."""
    tok, model = backend.tok, backend.model
    tok.padding_side = "right"  # the last real token sits at attention_mask.sum() - 1
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(backend.device)
            hidden = model(**enc, output_hidden_states=True).hidden_states[layer]
            last = enc["attention_mask"].sum(1) - 1
            out.append(hidden[torch.arange(len(last)), last].float().cpu())
    return torch.cat(out)


def refusal_direction(states: torch.Tensor, labels, refused) -> torch.Tensor:
    """Mean state of refused prompts minus that of answered ones, within each label, averaged over the
    labels that have both."""
    diffs = []
    for lab in sorted(set(labels)):
        ref = [i for i, (y, r) in enumerate(zip(labels, refused)) if y == lab and r]
        ans = [i for i, (y, r) in enumerate(zip(labels, refused)) if y == lab and not r]
        if ref and ans:
            diffs.append(states[ref].mean(0) - states[ans].mean(0))
    if not diffs:
        raise ValueError("no label has both refused and answered prompts")
    return torch.stack(diffs).mean(0)


@contextlib.contextmanager
def _edited(edits):
    """Inside the `with`, each `(block, edit)` of `edits` has `edit` rewrite the hidden states that block
    outputs.

    The model's own `hidden_states` are recorded before forward hooks run, so they do not show the edit; the
    next layer's input does."""
    def hook(edit):
        return lambda _mod, _args, out: (edit(out[0]), *out[1:]) if isinstance(out, tuple) else edit(out)

    handles = [block.register_forward_hook(hook(edit)) for block, edit in edits]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _like(model, t: torch.Tensor) -> torch.Tensor:
    p = next(model.parameters())
    return t.to(p.dtype).to(p.device)


def steering(model, direction: torch.Tensor, layer: int, scale: float, flagged):
    """A flagged request gets `scale` times `direction` added to the output of decoder layer `layer`; any
    other has `direction` projected out of the output of every decoder layer from `layer` on. `flagged` is
    one bool for the whole batch, one per row, or a function that gives them for each forward pass (a server
    whose rows join and leave its batch between steps), so that both kinds share one batch."""
    unit = _like(model, direction / direction.norm())
    shift = _like(model, scale * direction)
    read = flagged if callable(flagged) else lambda: flagged
    seen = {}

    def on():  # 1 flagged, 0 not (exact in any precision), rebuilt only when the flags change
        f = read()
        key = f if isinstance(f, bool) else tuple(f)
        if seen.get("key") != key:
            seen.update(key=key, on=_like(model, torch.tensor(f, dtype=torch.float32)).view(-1, 1, 1))
        return seen["on"]

    def drop(h):
        return h - (h @ unit).unsqueeze(-1) * unit

    def first(h):  # the layer where a flagged row gets the direction added
        o = on()
        return o * (h + shift) + (1 - o) * drop(h)

    def later(h):
        o = on()
        return o * h + (1 - o) * drop(h)

    blocks = model.model.layers[layer - 1:]
    return _edited([(blocks[0], first)] + [(b, later) for b in blocks[1:]])


class SteeredBackend:
    """A transformers backend whose `generate` steers each request by the supervisor's reading of it.

    Scoring (`score`, `next_token_logprobs`) is the unsteered model's: the steering is a generation policy."""

    def __init__(self, inner, direction: torch.Tensor, layer: int, request_harm, add: float = 0.0,
                 name: str = "cast"):
        self.inner, self.direction, self.layer, self.add, self.name = inner, direction, layer, add, name
        self.request_harm = request_harm
        self.flagged = 0  # requests the supervisor flagged so far

    def __getattr__(self, attr):  # render, score, tok, truncated ... are the inner backend's
        return getattr(self.inner, attr)

    def flags(self, prompts) -> list[bool]:
        """Whether the supervisor flags each conversation. It reads what the user wrote, the last user turn
        (a system prompt is the deployer's own), at the supervisor's threshold, which sits at 0.5."""
        asks = [next((m["content"] for m in reversed(p) if m["role"] == "user"), "") for p in prompts]
        flag = [p >= 0.5 for p in self.request_harm(asks)]
        self.flagged += sum(flag)
        return flag

    def steer_rows(self, flags):
        """Steering for a server's batch, each row by its own flag: `flags()` gives them (`self.flags` of each
        row's request) for the rows of each forward pass."""
        return steering(self.inner.model, self.direction, self.layer, self.add, flags)

    def generate(self, prompts, params: GenParams) -> list[str]:
        # The inner backend may reorder and re-batch its prompts, so each kind goes to it on its own.
        flag = self.flags(prompts)
        out = [""] * len(prompts)
        for flagged in (True, False):
            idx = [i for i, f in enumerate(flag) if f == flagged]
            if not idx:
                continue
            with steering(self.inner.model, self.direction, self.layer, self.add, flagged):
                for i, text in zip(idx, self.inner.generate([prompts[i] for i in idx], params)):
                    out[i] = text
        return out


def steering_meta(run) -> dict:
    """What the run's cast stage saved beside its direction (`start`, `layer`, `add`, ...)."""
    import json

    from .errors import CharterError
    from .stages.cast import META
    from .stages.common import CAST_DIR

    path = run.path(CAST_DIR, META)
    if not path.exists():
        raise CharterError(f"{path.parent}: the cast stage has not run yet")
    return json.loads(path.read_text())


def steered(run, backend) -> SteeredBackend:
    """The `cast` role of a run: `backend` (the model the cast stage read) steered as that stage saved."""
    from safetensors.torch import load_file

    from .models import model_key
    from .stages.cast import META, STEERING
    from .stages.common import CAST_DIR

    # `Run.model_spec("cast")` names a model folder, so `backend` is a transformers one; the cast stage
    # checked that the supervisor reads requests.
    harm = run.supervisor.request_harm
    folder, meta = run.path(CAST_DIR), steering_meta(run)
    b = SteeredBackend(backend, load_file(folder / STEERING)["direction"], meta["layer"], harm, meta["add"])
    # What caches of its answers are keyed by: the weights and the direction (the layer and `add` with it).
    weights = run.path("models", meta["start"])
    b.cache_key = "-".join(model_key(str(p)) for p in (weights, folder / STEERING, folder / META))
    return b
