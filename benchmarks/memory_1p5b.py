"""Does LoRA training of a 1.5B model fit in 24 GiB on a CPU? Measured on a random-init model of
Qwen2.5-1.5B's shape (nothing downloaded), through the same TRL path and CPU defaults the SFT stage uses.

    python benchmarks/memory_1p5b.py [--steps 2] [--seq 128] [--batch 2]

Prints parameters, peak resident memory (VmHWM) and seconds per step; writes benchmarks/memory_1p5b.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

# Qwen2.5-1.5B's published config (hidden 1536, 28 layers, 12 heads, 2 KV heads, vocab 151,936).
SHAPE = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
             num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)


def main():
    import torch
    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl import SFTConfig, SFTTrainer

    from charter.config import TrainConfig
    from charter.run import peak_rss_mib
    from charter.train import lora_config, trl_args
    from tests.conftest import build_tiny_llama

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "memory_1p5b.json"))
    a = ap.parse_args()

    import tempfile

    from charter.backends.hf import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok = load_tokenizer(str(build_tiny_llama(Path(tmp) / "tok")))  # any tokenizer: ids stay < vocab
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=151936, **SHAPE)
    t0 = time.time()
    model = Qwen2ForCausalLM(cfg).float()
    n_params = sum(p.numel() for p in model.parameters())
    build_s = time.time() - t0
    words = "please explain in detail how the water cycle works and why it matters for farming"
    text = " ".join([words] * (a.seq // len(words.split()) + 1))
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": text}],
                             "completion": [{"role": "assistant", "content": text}]}] * (a.steps * a.batch))
    tc = TrainConfig(max_steps=a.steps, batch_size=a.batch, lr=1e-4, max_length=a.seq, lora=True, lora_r=16)
    tr = SFTTrainer(model=model, args=trl_args(SFTConfig, tc, Path(tempfile.gettempdir()) / "charter-mem-1p5b",
                                               0, "cpu", completion_only_loss=False),
                    train_dataset=ds, processing_class=tok, peft_config=lora_config(tc))
    t0 = time.time()
    tr.train()
    step_s = (time.time() - t0) / a.steps
    res = {"model": "random-init Qwen2.5-1.5B shape", "params": n_params, "lora_r": 16, "seq": a.seq,
           "batch": a.batch, "steps": a.steps, "build_seconds": round(build_s, 1),
           "seconds_per_step": round(step_s, 1), "peak_rss_gib": round(peak_rss_mib() / 1024, 2),
           "fits_24_gib": peak_rss_mib() / 1024 < 24}
    print(json.dumps(res, indent=2))
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
