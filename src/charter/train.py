"""One trainer skeleton for every training stage (SFT, DPO, RL), with CPU-correct defaults.

TRL's own defaults turn on gradient checkpointing, which is slow on a CPU (see
README, "Speed"), and bf16 autocast whatever the hardware, so both are set
explicitly: autocast only where bfloat16 is native (`precision`). Its fused LM head is
made to project only the positions that carry a label (`labelled_positions_only`). Models are saved
as safetensors to a temporary folder and renamed into place, so a crash never
leaves a half-written model.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from pathlib import Path

import torch

from .backends.hf import load_tokenizer, pick_device, resolve_dtype

log = logging.getLogger("charter")


def trl_args(cls, cfg, out_dir, seed: int, device: str, report_to=(), precision: str = "auto", **extra):
    """TRL config `cls` from a stage's config; `extra` adds or overrides arguments."""
    dev = pick_device(device)
    # Weights and optimiser stay float32; autocast computes the matrix products in bfloat16.
    bf16 = resolve_dtype(precision, dev) == torch.bfloat16
    kw = dict(
        output_dir=str(out_dir),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=1,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        report_to=list(report_to),  # trackers from the `tracking` section; none by default
        seed=seed,
        bf16=bf16,
        fp16=False,
        gradient_checkpointing=False,  # memory is not the limit for these sizes; time is
        use_cpu=dev == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=False,
        include_num_input_tokens_seen=True,  # for tokens/s and achieved FLOP/s in the manifest
    )
    if "max_length" in cls.__dataclass_fields__:  # RL samples its sequences, so GRPO has no such field
        kw["max_length"] = cfg.max_length
    args = cls(**(kw | extra))
    # transformers adds trackers of its own accord (Kubeflow, where its environment variable is set); only
    # the ones the config names may receive anything.
    args.report_to = list(report_to)
    return args


def labelled_positions_only(on: bool = True) -> bool:
    """Make TRL's fused LM head, which TRL's SFT and GRPO losses go through, project only the
    positions that carry a label. TRL does so on Triton devices; elsewhere it projects every position, prompt
    and padding included, so that compilers for fixed-shape devices (Neuron) see one tile shape per batch.
    A CPU has no such compiler, and there the 49k-word output layer over the prompt is wasted work. Both
    paths compute the same numbers; TRL picks one with `trl.trainer.utils._use_triton`, which this wraps.
    Returns whether that hook exists in the installed TRL (if not, nothing changes)."""
    import trl.trainer.utils as tu

    hook = getattr(tu, "_use_triton", None)
    if hook is None:
        return False
    real = getattr(hook, "charter_wrapped", hook)
    if on:
        def compact(device) -> bool:
            return real(device) or device.type in ("cpu", "cuda", "mps")

        compact.charter_wrapped = real
        tu._use_triton = compact
    else:
        tu._use_triton = real
    return True


def load_trainable(path: str, device: str = "auto"):
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    return model.to(pick_device(device)), load_tokenizer(path)


def lora_config(cfg):
    if not cfg.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules="all-linear")


def save_model(model, tok, out: Path):
    """Merge LoRA if present, then write safetensors atomically to `out`."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    os.chmod(out, 0o755)


def train_stats(trainer, seconds: float, n_params: int) -> dict:
    """Steps, tokens/s and achieved FLOP/s (6 * params * tokens, Kaplan et al. 2020)."""
    tokens = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
    hist = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "steps": trainer.state.global_step,
        "train_seconds": round(seconds, 1),
        "first_loss": round(hist[0]["loss"], 4) if hist else None,
        "last_loss": round(hist[-1]["loss"], 4) if hist else None,
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1) if seconds and tokens else None,
        "gflop_per_s": round(6 * n_params * tokens / seconds / 1e9, 2) if seconds and tokens else None,
    }


def fit(run, trainer_cls, args_cls, cfg, rows, start: str, name: str, trainer_kw=None, resume=False, **extra) -> dict:
    """Train from the model `start` names (`base`, `sft`, ...) on `rows` and save the result as models/`name`.

    A stage brings its TRL trainer and config classes (`SFTTrainer`, `SFTConfig`, ...), its dataset rows in
    TRL's format, config arguments of its own (`extra`) and trainer arguments (`trainer_kw`, e.g. an RL
    trainer's reward functions). With `resume`, training continues from the last checkpoint a killed
    attempt left (the stage asks for checkpoints in `extra`). Returns the training statistics."""
    from datasets import Dataset

    from . import tracking

    run.release()  # one model in memory at a time
    labelled_positions_only()
    model, tok = load_trainable(run.model_spec_resolved(start), run.cfg.device)
    n_params = sum(p.numel() for p in model.parameters())
    work = work_dir(run, name)
    args = trl_args(args_cls, cfg, work, run.cfg.seed, run.cfg.device, precision=run.cfg.precision,
                    **tracking.trl_kwargs(run, name), **extra)
    with tracking.trainer_env(run, name):
        trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                              peft_config=lora_config(cfg), **(trainer_kw or {}))
        secs = timed_train(trainer, last_checkpoint(work) if resume else None)
    save_model(trainer.model, tok, run.path("models", name))
    shutil.rmtree(work, ignore_errors=True)  # checkpoints hold pickled optimizer state: not kept in a run
    return train_stats(trainer, secs, n_params)


def work_dir(run, name: str) -> Path:
    """Where training models/`name` keeps its checkpoints until the model is saved."""
    return run.path("models", f".{name}-work")


def last_checkpoint(work: Path) -> str | None:
    done = sorted(Path(work).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return str(done[-1]) if done else None


def timed_train(trainer, checkpoint=None):
    t0 = time.time()
    trainer.train(resume_from_checkpoint=checkpoint)
    return time.time() - t0
