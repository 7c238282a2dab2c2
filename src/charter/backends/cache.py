"""Generations cached by content, across runs.

A local model's answer is fixed by its weights (and generation config), the engine, device and library
versions that run it, the prompt text its chat template renders, and the sampling parameters (the seed
included: stages derive each chunk's seed from the chunk's contents, see `stages.common.chunk_seed`). So a
second run that asks the same model the same thing reads the answers instead of computing them: the base
model's generations and evaluations above all, which every run of one base model repeats, but also a trained
model evaluated again. The key hashes all of these; weights by `models.model_key`, which changes when a model
is retrained. Only models on local disk are cached: a hub id or a server may change behind its name.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from .. import records

VERSION = 6  # bump when the backends' outputs change for the same inputs


def weights_key(spec: str) -> str | None:
    """The cache identity of the model `spec` names: its engine, its weights and generation config, and the
    library versions that run it; None when the weights are not files on this machine."""
    import importlib.metadata

    from ..models import default_gguf, model_key, resolve_model, weights_spec

    if spec.startswith(("http://", "https://", "fake")):
        return None
    rest = weights_spec(spec)
    engine = spec[: len(spec) - len(rest)] or "hf:"
    if engine == "llamacpp:":  # llama.cpp reads the GGUF itself: no conversion just to name it
        target = default_gguf() if rest == "default" else Path(rest).expanduser()
    else:
        target = Path(resolve_model(spec))
    if not target.exists():
        return None
    parts = [engine, model_key(str(target))]
    if (target / "generation_config.json").is_file():  # eos ids and sampling defaults change the answers
        parts.append(hashlib.sha256((target / "generation_config.json").read_bytes()).hexdigest()[:16])
    for lib in ("torch", "transformers", "vllm", "llama-cpp-python"):
        try:
            parts.append(f"{lib}={importlib.metadata.version(lib)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return "|".join(parts)


class CachedBackend:
    """A backend whose `generate` answers from the cache when it can; everything else is the backend's own."""

    def __init__(self, inner, key: str, root: Path):
        # Set through __dict__: attribute writes (`backend.name = ...`) go to the wrapped backend.
        self.__dict__.update(inner=inner, key=key, root=Path(root), hits=0, calls=0, cached_truncated=0)

    def __getattr__(self, name):
        if name == "inner":  # not set yet (a copy being unpickled): no recursion through self.inner
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __setattr__(self, name, value):
        setattr(self.inner, name, value)

    @property
    def truncated(self) -> int:
        """Prompts cut to fit the context, counted for cached answers too, so a rerun's manifest says the same."""
        return getattr(self.inner, "truncated", 0) + self.cached_truncated

    def generate(self, prompts, params):
        # The rendered text, not the messages: a changed chat template is a different request. The device and
        # precision too: CPU and CUDA sample differently, and bfloat16 breaks near-ties otherwise than float32.
        seen = [self.inner.render(m) for m in prompts] if hasattr(self.inner, "render") else list(prompts)
        engine = [str(getattr(self.inner, "device", "")), str(getattr(self.inner, "dtype", ""))]
        blob = json.dumps([VERSION, self.key, *engine, seen, asdict(params)], sort_keys=True)
        digest = hashlib.sha256(blob.encode()).hexdigest()
        path = self.root / digest[:2] / f"{digest}.json"
        self.__dict__["calls"] += 1
        try:
            got = json.loads(path.read_text())
            if isinstance(got.get("texts"), list) and len(got["texts"]) == len(prompts):
                self.__dict__["hits"] += 1
                self.__dict__["cached_truncated"] += int(got.get("truncated", 0))
                return got["texts"]
        except (OSError, ValueError, AttributeError):
            pass  # absent or torn: compute it again
        before = getattr(self.inner, "truncated", 0)
        texts = self.inner.generate(prompts, params)
        records.write_json(path, {"texts": texts, "truncated": getattr(self.inner, "truncated", 0) - before})
        return texts


def cached(backend, spec: str):
    """`backend` behind the generation cache, or `backend` itself when its model has no local weights."""
    from ..models import cache_dir

    key = weights_key(spec)
    return backend if key is None else CachedBackend(backend, key, cache_dir() / "generations")
