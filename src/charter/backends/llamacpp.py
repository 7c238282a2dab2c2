"""llama.cpp backend (the `llamacpp` extra) for GGUF models on CPU.

Spec: `llamacpp:default` (the embedded SmolLM2 GGUF) or `llamacpp:PATH.gguf`.

Why not llama-cpp-python's high-level `Llama`: it decodes one sequence at a
time. Here up to `n_seq` sequences share one llama.cpp context and every step
decodes one token for each of them in a single batch, so the weights are read
once per step instead of once per sequence. Prompts are sorted by length, each
sequence stops on its own end-of-generation token, and for scoring, the prompt
prefix that all contexts share (the judge's instructions and few-shot example)
is prefilled once and its KV cache copied to the other sequences.

Text goes through the model's transformers tokenizer and chat template, so
prompts are the same token ids the transformers backend sees.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import CharterError
from .base import GenParams, common_prefix_len, option_token_ids  # noqa: F401 (common_prefix_len re-exported)

log = logging.getLogger("charter")
_QUIET = None  # the ctypes log callback must outlive every llama.cpp call


def _silence(L):
    """llama.cpp logs every tensor and graph to stderr; keep errors only."""
    global _QUIET
    if _QUIET is None:
        import ctypes

        _QUIET = L.llama_log_callback(lambda level, text, data: None)
        L.llama_log_set(_QUIET, ctypes.c_void_p(0))


def _gguf_path(spec: str) -> Path:
    from ..models import default_gguf

    p = default_gguf() if spec in ("", "default") else Path(spec).expanduser()
    if not p.exists() or p.suffix != ".gguf":
        raise CharterError(f"backend llamacpp: {spec!r} is not a .gguf file (or `default`)")
    return p


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def sample(logits: np.ndarray, temperature: float, top_p: float, rng) -> int:
    """Greedy at temperature 0, else nucleus sampling."""
    if temperature <= 0:
        return int(logits.argmax())
    p = np.exp(log_softmax(logits / temperature))
    order = np.argsort(-p)
    keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)]
    q = p[keep] / p[keep].sum()
    return int(keep[rng.choice(len(keep), p=q)])


class LlamaCppBackend:
    def __init__(self, spec: str = "default", n_seq: int = 16, n_ctx_per_seq: int = 2048, threads: int | None = None,
                 **_):
        try:
            import llama_cpp
        except ImportError:
            raise CharterError("backend llamacpp: llama-cpp-python is not installed "
                               "(pip install 'charter[llamacpp]', or `make install-llamacpp`)") from None
        from transformers import AutoTokenizer

        from .hf import PLAIN_TEMPLATE

        self.L = L = llama_cpp
        path = _gguf_path(spec)
        self.name = f"llamacpp:{spec}"
        self.tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        if not self.tok.chat_template:
            self.tok.chat_template = PLAIN_TEMPLATE
        _silence(L)
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise CharterError(f"backend llamacpp: llama.cpp could not load {path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.n_seq = n_seq
        self.max_context = min(n_ctx_per_seq, L.llama_model_n_ctx_train(self.model))
        cp = L.llama_context_default_params()
        cp.n_ctx = self.max_context * n_seq
        cp.n_batch = cp.n_ubatch = 512
        cp.n_seq_max = n_seq
        cp.kv_unified = True  # sequences share one KV pool, so a prefix can be copied between them
        cp.n_threads = cp.n_threads_batch = threads or os.cpu_count() or 1
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise CharterError("backend llamacpp: could not create a llama.cpp context")
        self.mem = L.llama_get_memory(self.ctx)
        self.n_batch = cp.n_batch
        self.batch = L.llama_batch_init(self.n_batch, 0, n_seq)
        self.truncated = 0

    def close(self):
        if getattr(self, "ctx", None):
            self.L.llama_batch_free(self.batch)
            self.L.llama_free(self.ctx)
            self.L.llama_model_free(self.model)
            self.ctx = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # --- llama.cpp plumbing ---------------------------------------------------
    def _decode(self, items):
        """Decode (token, pos, seq, want_logits) items in n_batch slices. Returns, per item that wanted
        logits, its row: a dict (seq, pos) -> logits (float32 copy)."""
        L, b = self.L, self.batch
        out = {}
        for start in range(0, len(items), self.n_batch):
            part = items[start:start + self.n_batch]
            b.n_tokens = 0
            for tok, pos, seq, want in part:
                i = b.n_tokens
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, want
                b.seq_id[i][0] = seq
                b.n_tokens += 1
            rc = L.llama_decode(self.ctx, b)
            if rc != 0:
                raise CharterError(f"backend llamacpp: llama_decode failed ({rc}); context too small?")
            for i, (_, pos, seq, want) in enumerate(part):
                if want:
                    out[(seq, pos)] = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, i),
                                                            shape=(self.n_vocab,)).copy()
        return out

    def _clear(self):
        self.L.llama_memory_clear(self.mem, True)

    def _fit(self, ids: list[int], budget: int) -> list[int]:
        limit = self.max_context - budget
        if len(ids) > limit:  # keep the end: the request and the generation prompt live there
            self.truncated += 1
            log.warning("a prompt longer than the %d-token context was truncated", limit)
            return ids[-limit:]
        return ids

    def _encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def _prefill(self, seqs: list[list[int]], logits_at=None):
        """Prefill sequences 0..n-1, sharing their common prefix through the KV cache.
        `logits_at[s]` lists the positions of sequence s whose logits are wanted (default: the last)."""
        self._clear()
        want = [set(logits_at[s]) if logits_at else {len(t) - 1} for s, t in enumerate(seqs)]
        # The shared prefix stops before the first position whose logits anyone wants.
        k = min(common_prefix_len(seqs), *(min(w) for w in want if w)) if len(seqs) > 1 else 0
        items = [(t, p, 0, False) for p, t in enumerate(seqs[0][:k])]
        got = self._decode(items) if items else {}
        for s in range(1, len(seqs) if k else 0):
            self.L.llama_memory_seq_cp(self.mem, 0, s, 0, k)
        items = [(t, p, s, p in want[s]) for s, toks in enumerate(seqs) for p, t in enumerate(toks) if p >= k]
        got.update(self._decode(items))
        return got

    # --- the Backend protocol ---------------------------------------------------
    def render(self, messages, add_generation_prompt=True) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def generate(self, prompts, params: GenParams) -> list[str]:
        texts = [self.render(m) for m in prompts]
        ids = [self._fit(self._encode(t), params.max_new_tokens) for t in texts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = [""] * len(ids)
        for g in range(0, len(order), self.n_seq):
            group = order[g:g + self.n_seq]
            seqs = [ids[i] for i in group]
            logits = self._prefill(seqs)
            rngs = [np.random.default_rng([params.seed, i]) for i in group]
            pos = [len(s) for s in seqs]
            last = {s: logits[(s, pos[s] - 1)] for s in range(len(seqs))}
            new = [[] for _ in seqs]
            active = set(range(len(seqs)))
            while active:
                items = []
                for s in sorted(active):
                    t = sample(last[s], params.temperature, params.top_p, rngs[s])
                    if self.L.llama_vocab_is_eog(self.vocab, t):
                        active.discard(s)
                        continue
                    new[s].append(t)
                    if len(new[s]) >= params.max_new_tokens:
                        active.discard(s)
                        continue
                    items.append((t, pos[s], s, True))
                    pos[s] += 1
                if items:
                    got = self._decode(items)
                    last = {s: got[(s, p)] for _, p, s, _ in items}
            for i, toks in zip(group, new):
                out[i] = self.tok.decode(toks, skip_special_tokens=True).strip()
        return out

    def next_token_logprobs(self, contexts, options) -> list[list[float]]:
        option_ids = option_token_ids(self._encode, options)
        ids = [self._fit(self._encode(c), 1) for c in contexts]
        out = []
        for g in range(0, len(ids), self.n_seq):
            seqs = ids[g:g + self.n_seq]
            got = self._prefill(seqs)
            for s, toks in enumerate(seqs):
                lp = log_softmax(got[(s, len(toks) - 1)])
                out.append([float(lp[i]) for i in option_ids])
        return out

    def score(self, contexts, continuations) -> list[float]:
        out = []
        pairs = [(self._encode(c), self._encode(c + x)) for c, x in zip(contexts, continuations)]
        for g in range(0, len(pairs), self.n_seq):
            group = pairs[g:g + self.n_seq]
            seqs = [full for _, full in group]
            at = [range(len(ctx) - 1, len(full) - 1) for ctx, full in group]
            got = self._prefill(seqs, at)
            for s, (ctx, full) in enumerate(group):
                out.append(float(sum(log_softmax(got[(s, p)])[full[p + 1]] for p in at[s])))
        return out
