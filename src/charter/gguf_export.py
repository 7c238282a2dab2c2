"""Write a Llama safetensors folder as a GGUF file that llama.cpp (and Ollama) can load.

Weights are written unquantized (f16 or f32) so the GGUF model computes what
the safetensors model computes. Two things differ from the Hugging Face layout:

- tensor names follow llama.cpp's scheme (the `gguf` package's name map);
- the query and key projections are reordered: transformers' Llama rotates the
  two halves of each head (`rotate_half`), llama.cpp's rotates adjacent pairs,
  so each head's rows are interleaved to give the same attention scores.

The tokenizer must be byte-level BPE (GPT-2 style, as SmolLM2 and Llama 3
use). llama.cpp does not read the pre-tokenizer from the file, only a name for
it, so the name is chosen by matching the tokenizer's own pre-tokenizer; one
that matches none of the known forms is refused rather than guessed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import CharterError

OUTTYPES = ("f16", "f32")

# The split expression Llama 3's tokenizer.json carries (llama.cpp calls this pre-tokenizer `llama-bpe`).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's name for the pre-tokenizer of a byte-level BPE tokenizer.json."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    last = steps[-1] if steps else {}
    if last.get("type") == "ByteLevel" and last.get("add_prefix_space"):
        raise CharterError("GGUF export: a byte-level tokenizer that adds a prefix space is not supported")
    if kinds == ["ByteLevel"] and last.get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and last.get("use_regex", True):
        return "smollm"  # digits one by one, then GPT-2's split
    if (kinds == ["Split", "ByteLevel"] and steps[0].get("pattern", {}).get("Regex") == _LLAMA3_SPLIT
            and not last.get("use_regex", True)):
        return "llama-bpe"
    raise CharterError(f"GGUF export: unknown pre-tokenizer {json.dumps(pre)[:200]}; convert this model with "
                       "llama.cpp's convert_hf_to_gguf.py instead")


def _hparams(cfg: dict) -> dict:
    if cfg.get("model_type") != "llama":
        raise CharterError(f"GGUF export supports Llama-architecture models; this one is "
                           f"{cfg.get('model_type')!r} (convert it with llama.cpp's convert_hf_to_gguf.py)")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise CharterError(f"GGUF export: rope scaling {rope.get('rope_type') or rope.get('type')!r} is not supported")
    n_head = cfg["num_attention_heads"]
    return {
        "n_layer": cfg["num_hidden_layers"], "n_head": n_head,
        "n_head_kv": cfg.get("num_key_value_heads") or n_head,
        "head_dim": cfg.get("head_dim") or cfg["hidden_size"] // n_head,
        "rope_theta": float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
    }


def interleave_heads(w, n_head: int):
    """Reorder each head's rows from halves (x1..xk, y1..yk) to pairs (x1, y1, ...), see module docstring."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _add_tokenizer(writer, folder: Path, n_vocab: int):
    import gguf
    from transformers import AutoTokenizer

    path = folder / "tokenizer.json"
    if not path.exists():
        raise CharterError(f"{folder}: GGUF export needs a fast tokenizer (tokenizer.json)")
    tj = json.loads(path.read_text())
    model = tj.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback") or (tj.get("decoder") or {}).get("type") != "ByteLevel":
        raise CharterError(f"{path}: GGUF export supports byte-level BPE tokenizers (GPT-2 style); this one is "
                           f"{model.get('type')!r}")
    pre = pre_tokenizer_name(tj)
    tok = AutoTokenizer.from_pretrained(folder)
    vocab = tok.get_vocab()
    if len(vocab) > n_vocab:
        raise CharterError(f"{folder}: the tokenizer has {len(vocab)} tokens but the model only {n_vocab}")
    by_id = {i: t for t, i in vocab.items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i in added:  # added tokens are stored as typed, not in byte-level spelling
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
        else:  # the embedding matrix is padded beyond the tokenizer
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=n_vocab)
    # Whether BOS/EOS are added is read off what the tokenizer does, not off config flags that may be absent.
    probe = tok("a").input_ids
    special.add_special_token["bos"] = tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id]
    special.add_special_token["eos"] = tok.eos_token_id is not None and probe[-1:] == [tok.eos_token_id]
    if not special.chat_template and tok.chat_template:
        special.chat_template = tok.chat_template
    special.add_to_gguf(writer, quiet=True)


def convert(folder, out, outtype: str = "f16", name: str | None = None) -> Path:
    """Write the Llama model in `folder` (safetensors) to the GGUF file `out`, atomically."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    if outtype not in OUTTYPES:
        raise CharterError(f"GGUF export: outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    folder, out = Path(folder), Path(out)
    cfg = json.loads((folder / "config.json").read_text())
    hp = _hparams(cfg)
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise CharterError(f"{folder}: no .safetensors weights to convert")
    tmp = out.with_name(f".{out.name}.tmp")
    writer = gguf.GGUFWriter(tmp, "llama", use_temp_file=True)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or folder.name)
        writer.add_context_length(cfg["max_position_embeddings"])
        writer.add_embedding_length(cfg["hidden_size"])
        writer.add_block_count(hp["n_layer"])
        writer.add_feed_forward_length(cfg["intermediate_size"])
        writer.add_head_count(hp["n_head"])
        writer.add_head_count_kv(hp["n_head_kv"])
        writer.add_rope_freq_base(hp["rope_theta"])
        writer.add_rope_dimension_count(hp["head_dim"])
        if hp["head_dim"] != cfg["hidden_size"] // hp["n_head"]:
            writer.add_key_length(hp["head_dim"])
            writer.add_value_length(hp["head_dim"])
        writer.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
        writer.add_vocab_size(cfg["vocab_size"])
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.ALL_F32)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_tokenizer(writer, folder, cfg["vocab_size"])
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hp["n_layer"])
        tied = cfg.get("tie_word_embeddings", False)
        for shard in shards:
            with safe_open(str(shard), framework="pt") as f:
                for key in f.keys():
                    if key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight"):
                        continue  # recomputed by llama.cpp / the same matrix as the embedding
                    target = names.get_name(key, try_suffixes=(".weight", ".bias"))
                    if target is None:
                        raise CharterError(f"{shard}: tensor {key!r} has no llama.cpp counterpart")
                    w = f.get_tensor(key).float().numpy()
                    if key.endswith(("q_proj.weight", "q_proj.bias")):
                        w = interleave_heads(w, hp["n_head"])
                    elif key.endswith(("k_proj.weight", "k_proj.bias")):
                        w = interleave_heads(w, hp["n_head_kv"])
                    # Norms stay f32 in either outtype, as llama.cpp expects.
                    dtype = np.float16 if outtype == "f16" and w.ndim > 1 else np.float32
                    writer.add_tensor(target, np.ascontiguousarray(w.astype(dtype)))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(tmp, out)
    return out
