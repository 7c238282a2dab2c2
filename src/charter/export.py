"""`charter export RUN_DIR --out DIR`: take an aligned model out of charter.

A run's final model is already a merged safetensors folder (LoRA adapters are
merged when a training stage saves), so export copies it as it is and adds:

- `README.md`, a Hugging Face model card with YAML metadata and the run's
  evaluation tables (see `modelcard`);
- the constitution file the run was aligned to (its hash is checked);
- with `--gguf`, an unquantized GGUF for llama.cpp (see `gguf_export`);
- with `--ollama`, an Ollama `Modelfile` that points at that GGUF.

Everything is written to a temporary folder renamed into place at the end, so
an interrupted export leaves no half-written model behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from . import modelcard
from .errors import CharterError
from .stages.common import CALIBRATION, MANIFEST, METRICS, final_model, read_manifest

CHATML_STOPS = ["<|im_start|>", "<|im_end|>"]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise CharterError(f"{path}: not valid JSON ({e})") from None


def load_run(run_dir) -> dict:
    m = read_manifest(run_dir)
    if m is None:
        raise CharterError(f"{run_dir}: not a run directory (no {MANIFEST})")
    return m


def model_folder(run_dir, manifest: dict, model: str | None = None) -> Path:
    """The folder to export: `--model` if given (any model spec), else the run's final model."""
    if model:
        from .models import resolve_model

        path = Path(resolve_model(model))
        if not path.is_dir():
            raise CharterError(f"--model {model}: export needs a local model folder, .gguf or `default`")
        return path
    path = final_model(run_dir, manifest, hint="finish its training stages, or give --model")
    if not (path / "config.json").exists():
        raise CharterError(f"{path}: the final model folder is missing")
    return path


def copy_model(src: Path, dst: Path):
    """Config, tokenizer, chat template and safetensors weights; pickled files are left behind."""
    if not any(src.glob("*.safetensors")):
        raise CharterError(f"{src}: no .safetensors weights to export")
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name != "README.md" and f.suffix not in (".bin", ".pt", ".pth", ".pkl"):
            shutil.copyfile(f, dst / f.name)
            os.chmod(dst / f.name, 0o644)  # a folder to share: not the private mode of a cache file


def constitution_file(manifest: dict) -> Path:
    """The constitution the run was aligned to, checked against the hash the run recorded."""
    from .constitution import BUILTIN, builtin_path

    c = manifest.get("constitution") or {}
    spec = (manifest.get("config") or {}).get("constitution", "")
    for path in (Path(c.get("path", "")), builtin_path(spec) if spec in BUILTIN else None):
        if path and path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == c.get("sha256"):
            return path
    raise CharterError(f"constitution {c.get('path') or spec!r}: file missing or changed since the run "
                       f"(recorded sha256 {c.get('sha256', '?')[:16]})")


def chat_format(folder: Path) -> dict:
    """How the folder's chat template renders: ChatML or not, and any system message it adds by default."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
            {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}]
    chatml = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs) + "<|im_start|>assistant\n"
    try:
        is_chatml = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == chatml
        plain = tok.apply_chat_template(msgs[1:2], tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a template that rejects a system turn is simply not ChatML
        is_chatml, plain = False, ""
    system = None
    head, tail = "<|im_start|>system\n", "<|im_end|>\n<|im_start|>user\nU<|im_end|>"
    if is_chatml and plain.startswith(head) and tail in plain:
        system = plain[len(head):plain.index(tail)]
    return {"chatml": is_chatml, "system": system, "eos": tok.eos_token}


def modelfile(gguf_name: str, fmt: dict) -> str:
    """An Ollama Modelfile: the GGUF, the chat template as a Go template, and stop strings."""
    lines = ["# Build with: ollama create NAME -f Modelfile", f"FROM ./{gguf_name}"]
    stops = list(CHATML_STOPS) if fmt["chatml"] else []
    if fmt["chatml"]:
        # Ollama passes a SYSTEM message inside .Messages, so every turn, system included, is one block.
        lines += ['TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}',
                  '{{ .Content }}<|im_end|>', '{{ end }}<|im_start|>assistant', '"""']
        if fmt["system"]:  # the template adds this when no system message is given; keep that behaviour
            lines.append(f'SYSTEM """{fmt["system"]}"""')
    else:
        lines.append("# This chat template is not ChatML: write a TEMPLATE for it by hand (the Jinja original is "
                     "tokenizer.chat_template inside the GGUF).")
    if fmt["eos"] and fmt["eos"] not in stops:
        stops.append(fmt["eos"])
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"


def export(run_dir, out, gguf: bool = False, ollama: bool = False, model: str | None = None,
           outtype: str = "f16", license: str | None = None) -> dict:
    """Write the export folder; returns {what: path} for everything written."""
    run_dir, out = Path(run_dir), Path(out)
    manifest = load_run(run_dir)
    src = model_folder(run_dir, manifest, model)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CharterError(f"{out}: already exists and is not empty; choose a new --out")
    const = constitution_file(manifest)
    metrics = _read_json(run_dir / METRICS) or {}
    cal = _read_json(run_dir / CALIBRATION) or {}
    role = Path(manifest["final_model"]).name if not model and manifest.get("final_model") else None
    tmp = out.with_name(f".{out.name}.export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        copy_model(src, tmp)
        shutil.copyfile(const, tmp / "constitution.yaml")
        gguf_name = None
        if gguf or ollama:
            from .gguf_export import convert

            gguf_name = f"{out.name}-{outtype}.gguf"
            convert(tmp, tmp / gguf_name, outtype, name=out.name)
        if ollama:
            (tmp / "Modelfile").write_text(modelfile(gguf_name, chat_format(tmp)))
        text = modelcard.card(out.name, manifest, metrics, cal, role, license, gguf_name, ollama, source=model)
        (tmp / "README.md").write_text(text)
        if out.exists():
            out.rmdir()
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    written = {"model": out, "card": out / "README.md", "constitution": out / "constitution.yaml"}
    if gguf_name:
        written["gguf"] = out / gguf_name
    if ollama:
        written["modelfile"] = out / "Modelfile"
    return written
