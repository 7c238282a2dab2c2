"""Generations cached by content, across runs.

A local model's answer is fixed by its weights, the engine, the messages and the sampling parameters (the
seed included: stages derive each chunk's seed from the chunk's contents, see `stages.common.chunk_seed`).
So a second run that asks the same model the same thing reads the answers instead of computing them: the
base model's generations and evaluations above all, which every run of one base model repeats, but also a
trained model evaluated again. The key hashes all four; weights by `models.model_key`, which changes when a
model is retrained. Only models on local disk are cached: a hub id or a server may change behind its name.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from .. import records

VERSION = 1  # bump when the backends' outputs change for the same inputs


def weights_key(spec: str) -> str | None:
    """The cache identity of the model `spec` names: its engine and its weights, or None when the weights are
    not files on this machine."""
    from ..models import model_key, resolve_model, weights_spec

    if spec.startswith(("http://", "https://", "fake")):
        return None
    target = Path(resolve_model(spec))
    if not target.exists():
        return None
    engine = spec[: len(spec) - len(weights_spec(spec))] or "hf:"
    return f"{engine}{model_key(str(target))}"


class CachedBackend:
    """A backend whose `generate` answers from the cache when it can; everything else is the backend's own."""

    def __init__(self, inner, key: str, root: Path):
        # Set through __dict__: attribute writes (`backend.name = ...`) go to the wrapped backend.
        self.__dict__.update(inner=inner, key=key, root=Path(root), hits=0, calls=0)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __setattr__(self, name, value):
        setattr(self.inner, name, value)

    def generate(self, prompts, params):
        blob = json.dumps([VERSION, self.key, list(prompts), asdict(params)], sort_keys=True)
        digest = hashlib.sha256(blob.encode()).hexdigest()
        path = self.root / digest[:2] / f"{digest}.json"
        self.__dict__["calls"] += 1
        try:
            texts = json.loads(path.read_text())
            if isinstance(texts, list) and len(texts) == len(prompts):
                self.__dict__["hits"] += 1
                return texts
        except (OSError, ValueError):
            pass  # absent or torn: compute it again
        texts = self.inner.generate(prompts, params)
        records.write_json(path, texts)
        return texts


def cached(backend, spec: str):
    """`backend` behind the generation cache, or `backend` itself when its model has no local weights."""
    from ..models import cache_dir

    key = weights_key(spec)
    return backend if key is None else CachedBackend(backend, key, cache_dir() / "generations")
