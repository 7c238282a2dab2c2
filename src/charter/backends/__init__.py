"""Backend registry. Specs map to classes by name and are imported lazily,
so `import charter` never imports torch-heavy or optional engines.

Spec forms: `fake`, `fake:NAME`, `default`, a hub id, a local folder, a `.gguf` file,
`hf:SPEC` to force the transformers backend, `vllm:SPEC` for vLLM, `llamacpp:default|FILE.gguf` for
llama.cpp, or `http(s)://HOST:PORT/v1?model=NAME` for an OpenAI-compatible server.
"""
from __future__ import annotations

from ..registry import Registry
from .base import Backend, GenParams, user  # noqa: F401

BACKENDS = Registry("backend", {
    "fake": "charter.backends.fake:FakeBackend",
    "hf": "charter.backends.hf:HFBackend",
    "http": "charter.backends.http:HTTPBackend",
    "https": "charter.backends.http:HTTPBackend",
    "vllm": "charter.backends.vllm:VLLMBackend",
    "llamacpp": "charter.backends.llamacpp:LlamaCppBackend",
})


def get_backend(spec: str, **kwargs) -> Backend:
    """Build the backend a spec names (see module docstring); a spec of no engine goes to transformers."""
    cls, rest = BACKENDS.resolve(spec, fallback="hf")
    # A URL keeps its scheme; a bare engine name (`fake`, `fake?delay=1`) is its own spec.
    return cls(spec if BACKENDS.kind(spec) in ("http", "https") or not rest else rest, **kwargs)


def trained_spec(base: str, folder) -> str:
    """The spec of a model charter trained from `base`: vLLM serves it as it served the base. llama.cpp needs
    a GGUF, and a server or the fake backend cannot load the folder, so those fall back to transformers."""
    return f"vllm:{folder}" if BACKENDS.kind(base) == "vllm" else str(folder)
