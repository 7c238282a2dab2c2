"""Backend registry. Specs map to classes by name and are imported lazily,
so `import charter` never imports torch-heavy or optional engines.

Spec forms: `fake`, `fake:NAME`, `default`, a hub id, a local folder, a `.gguf` file,
`hf:SPEC` to force the transformers backend, `llamacpp:default|FILE.gguf` for llama.cpp, or `http(s)://HOST:PORT/v1?model=NAME`
for an OpenAI-compatible server.
"""
from __future__ import annotations

import importlib

from .base import Backend, GenParams, user  # noqa: F401

REGISTRY = {
    "fake": "charter.backends.fake:FakeBackend",
    "hf": "charter.backends.hf:HFBackend",
    "http": "charter.backends.http:HTTPBackend",
    "vllm": "charter.backends.vllm:VLLMBackend",
    "llamacpp": "charter.backends.llamacpp:LlamaCppBackend",
}


def _load(target: str):
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def get_backend(spec: str, **kwargs) -> Backend:
    """Build the backend a spec names (see module docstring)."""
    if spec.startswith(("http://", "https://")):
        return _load(REGISTRY["http"])(spec, **kwargs)
    kind, _, rest = spec.partition(":")
    kind = kind.partition("?")[0]
    if kind in REGISTRY and (rest or kind == "fake"):
        return _load(REGISTRY[kind])(rest or spec, **kwargs)
    return _load(REGISTRY["hf"])(spec, **kwargs)
