"""transformers backend (CPU or CUDA) for hub ids, local folders and .gguf files.

Generation sorts prompts by length and batches them with left padding, so one
forward pass serves many prompts with little padding, and drops each row from its batch once it has ended
(see README, "Speed").
"""
from __future__ import annotations

import inspect
import logging
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import CharterError
from ..models import resolve_model
from .base import GenParams, common_prefix_len, option_token_ids

log = logging.getLogger("charter")

# Base models (no chat template) get this plain format.
PLAIN_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise CharterError("device=cuda but no CUDA GPU is visible")
    return device


def native_bf16(device) -> bool:
    """Whether bfloat16 matrix products run in hardware here: a CUDA GPU that has them, or a CPU with
    AVX512-BF16 or AMX. Elsewhere bfloat16 is emulated and slower than float32."""
    if str(device).startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def cache_kwarg(model) -> str:
    """The name of forward's key/value cache argument: transformers 5.x renamed `past_key_values` to `cache`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(out):
    """The key/value cache a forward pass returned, under either name."""
    return out.cache if "cache" in out else out.past_key_values


def prefix_states(model, ids, **kw):
    """One forward pass over `ids`, whose key/value states every sequence that starts with them can share:
    (the model's output, the states per layer). The states are None where a model's cache holds more than
    plain keys and values (a sliding window, a recurrent or an indexed layer), which cannot be shared so.
    The LM head is skipped: a prefix's logits are never read."""
    from transformers.cache_utils import DynamicLayer

    body = getattr(model, "base_model", model)
    out = body(input_ids=torch.tensor([ids], device=model.device), use_cache=True, **kw)
    # The cache has a slot per configured layer; a body cut short (the probe's) leaves the slots past it empty.
    layers = output_cache(out).layers[:len(body.layers) if hasattr(body, "layers") else None]
    if not all(type(layer) is DynamicLayer for layer in layers):
        return out, None
    return out, [(layer.keys, layer.values) for layer in layers]


def repeated_cache(kv, n: int, model):
    """A fresh cache holding the states `prefix_states` returned, seen by `n` sequences: expanded, so the opening
    is computed once; the first forward pass that appends to the cache copies it into every row."""
    from transformers import DynamicCache

    return DynamicCache([(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in kv], config=model.config)


def resolve_dtype(precision: str, device) -> torch.dtype:
    """`auto`: bfloat16 where it is native, float32 elsewhere; or the precision named."""
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[precision]


class NucleusSampler:
    """Nucleus sampling (Holtzman et al. 2019, arXiv 1904.09751) as a logits processor: it draws the next
    token itself and hands `generate` a row that greedy decoding can only read one way.

    Why not transformers' own sampler: its top-p sorts the whole vocabulary and its multinomial draws an
    exponential for every word, at every step, for every row; on a 2-core CPU with SmolLM2's 49k words that
    was more time than the model's matrix products (README, "Speed"). Here the `k` most probable words are the
    candidates; a row whose nucleus reaches past them falls back to the full sort, so the distribution is
    nucleus sampling's exactly: the most probable words whose mass before each is below `top_p`."""

    def __init__(self, temperature: float, top_p: float | None, k: int = 256):
        self.temperature, self.top_p, self.k = temperature, top_p if top_p is not None else 1.0, k

    def __call__(self, input_ids, scores):
        return torch.full_like(scores, float("-inf")).scatter_(-1, self.draw(scores)[:, None], 0.0)

    def draw(self, scores, generator=None) -> torch.Tensor:
        """One token per row of `scores` (rows, vocabulary), from `generator`'s random numbers if given."""
        probs = (scores / self.temperature).softmax(-1)
        if self.top_p >= 1:  # the whole distribution
            return torch.multinomial(probs, 1, generator=generator)[:, 0]
        vals, idx = probs.topk(min(self.k, probs.shape[-1]), dim=-1)
        short = vals.sum(-1) < self.top_p  # the candidates hold less than the nucleus's mass
        token = torch.empty(len(probs), 1, dtype=torch.long, device=probs.device)
        for rows, full in ((~short, False), (short, True)):
            if not rows.any():
                continue
            v, i = probs[rows].sort(-1, descending=True) if full else (vals[rows], idx[rows])
            keep = (v.cumsum(-1) - v) < self.top_p  # the mass before each word is below top_p
            keep[:, 0] = True  # top_p 0 is greedy
            v = v * keep
            token[rows] = i.gather(-1, torch.multinomial(v, 1, generator=generator))
        return token[:, 0]


def sampling_kwargs(temperature: float, top_p: float | None) -> dict:
    """`generate` arguments for greedy decoding at temperature 0, else nucleus sampling (`NucleusSampler`)."""
    from transformers import LogitsProcessorList

    kw = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    if temperature > 0:
        kw["logits_processor"] = LogitsProcessorList([NucleusSampler(temperature, top_p)])
    return kw


def next_token(temperature: float, top_p: float | None):
    """scores (rows, vocabulary) -> one token per row: greedy at temperature 0, else `NucleusSampler`'s draw."""
    if temperature > 0:
        return NucleusSampler(temperature, top_p).draw
    return lambda scores: scores.argmax(-1)


# Generation-config fields that `decode` may ignore: token ids it reads itself, bookkeeping, and sampling
# settings that `sampling_kwargs` overrides on the `generate` path too.
NEUTRAL_GENERATION = {"bos_token_id", "eos_token_id", "pad_token_id", "transformers_version", "_from_model_config",
                      "use_cache", "do_sample", "temperature", "top_p", "top_k", "min_p", "typical_p",
                      "max_length", "max_new_tokens", "output_attentions", "output_hidden_states"}
# Generation-config fields that are logits processors `Rows` applies itself, in `generate`'s order: name ->
# the processor for one row, from the config, the row's prompt length and the ids that end a row. Each row is
# processed by its own history (prompt and answer, no padding), so its answer does not depend on its
# neighbours. Any other field (a stopping rule, guidance, a cache of another kind) is something `generate`
# does that `decode` does not, so such a model decodes through `generate`.
ROW_PROCESSORS = {
    "sequence_bias": lambda c, n, eos: _lp().SequenceBiasLogitsProcessor(c.sequence_bias),
    "repetition_penalty": lambda c, n, eos: _lp().RepetitionPenaltyLogitsProcessor(c.repetition_penalty),
    "no_repeat_ngram_size": lambda c, n, eos: _lp().NoRepeatNGramLogitsProcessor(c.no_repeat_ngram_size),
    "bad_words_ids": lambda c, n, eos: _lp().NoBadWordsLogitsProcessor(c.bad_words_ids, eos),
    "min_length": lambda c, n, eos: _lp().MinLengthLogitsProcessor(c.min_length, eos, device=eos.device),
    "min_new_tokens": lambda c, n, eos: _lp().MinNewTokensLengthLogitsProcessor(n, c.min_new_tokens, eos,
                                                                                device=eos.device),
    "suppress_tokens": lambda c, n, eos: _lp().SuppressTokensLogitsProcessor(c.suppress_tokens, device=eos.device),
    "begin_suppress_tokens": lambda c, n, eos: _lp().SuppressTokensAtBeginLogitsProcessor(
        c.begin_suppress_tokens, n, device=eos.device),
}


def _lp():
    from transformers import generation
    return generation


def decodes_alone(model) -> bool:
    """Whether `decode` can run `model`: a generation config with nothing `generate` would apply beyond what
    `decode` does (`ROW_PROCESSORS` included), a forward that takes positions, and a cache whose layers hold
    plain keys and values, from which rows can be dropped (not a recurrent or linear-attention state, not one
    `generate` builds itself)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    config = getattr(model, "generation_config", None)
    if config is not None and set(config.to_diff_dict()) - NEUTRAL_GENERATION - set(ROW_PROCESSORS):
        return False
    takes = inspect.signature(model.forward).parameters
    if not {"position_ids", "attention_mask", cache_kwarg(model)} <= set(takes):
        return False
    if not getattr(model, "_supports_default_dynamic_cache", lambda: True)():
        return False
    try:
        layers = DynamicCache(config=model.config).layers
    except (AttributeError, TypeError, ValueError):  # a config transformers cannot lay a cache out from
        return False
    return all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


class Rows:
    """The sequences decoding together, one batch row each, for a model that `decodes_alone`.

    Rows join between steps (`join`: prefilled, their key/value states merged into the batch's, left-padded
    to one width) and leave once they have ended (`keep`: dropped with their states). So a batch runs only as
    long as its rows still need, and a server can take a new request into a running batch instead of making
    it wait for the batch to end. A row's arithmetic does not depend on the rows beside it: its greedy tokens
    are the ones it gets decoded alone, up to the rounding of a different batch shape. The generation
    config's logits processors (`ROW_PROCESSORS`) apply to each row by its own history (`scores`)."""

    def __init__(self, model, eos=()):
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        self.model, self.kw = model, cache_kwarg(model)
        self.cache = self.mask = self.last = self.logits = None
        config = getattr(model, "generation_config", None)
        diff = config.to_diff_dict() if config is not None else {}
        self.processed = [f for name, f in ROW_PROCESSORS.items() if name in diff]
        self.config, self.eos = config, torch.tensor(sorted(eos), dtype=torch.long)
        self.history, self.processors = [], []  # per row, only where there are processors
        # The logits of the prompt are never read but its last position's.
        takes = inspect.signature(model.forward).parameters
        self.only_last = {"logits_to_keep": 1} if "logits_to_keep" in takes else {}
        # A sliding-window layer trims its states to its own window, so rows can leave it but not join it.
        self.joinable = all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)

    def __len__(self):
        return 0 if self.mask is None else len(self.mask)

    @torch.inference_mode()
    def join(self, enc: dict):
        """Prefill `enc` (as `HFBackend._encode` lays a batch out); its rows follow the rows already here."""
        from transformers import DynamicCache

        if len(self) and not self.joinable:  # before the prefill, which would be wasted
            raise ValueError("this model's cache cannot take rows into a running batch")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        cache = enc[self.kw] if self.kw in enc else DynamicCache(config=self.model.config)
        k = cache.get_seq_length()  # the shared opening, already run
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # as `generate` derives positions from a left-padded mask
        out = self.model(input_ids=ids[:, k:], attention_mask=mask, position_ids=pos[:, k:], use_cache=True,
                         **self.only_last, **{self.kw: cache})
        logits, last, cache = out.logits[:, -1].clone(), pos[:, -1], output_cache(out)  # cloned: the rest is freed
        if not len(self):
            self.cache, self.mask, self.last, self.logits = cache, mask, last, logits
        else:
            # Both batches are left-padded to one width; the padding is masked out.
            width = max(mask.shape[1], self.mask.shape[1])
            pad = torch.nn.functional.pad
            # States are (rows, heads, positions, head size): padded along positions, joined along rows.
            merged = [[torch.cat([pad(a, (0, 0, width - a.shape[-2], 0)), pad(b, (0, 0, width - b.shape[-2], 0))])
                       for a, b in ((mine.keys, theirs.keys), (mine.values, theirs.values))]
                      for mine, theirs in zip(self.cache.layers, cache.layers)]
            for layer, (keys, values) in zip(self.cache.layers, merged):  # only once every layer has merged
                layer.keys, layer.values = keys, values
            self.mask = torch.cat([pad(m, (width - m.shape[-1], 0)) for m in (self.mask, mask)])
            self.last, self.logits = torch.cat([self.last, last]), torch.cat([self.logits, logits])
        if self.processed:  # only once the rows have joined, so histories stay one per row
            eos = self.eos.to(ids.device)
            self.history += [row[m.bool()] for row, m in zip(ids, mask)]
            self.processors += [_lp().LogitsProcessorList(f(self.config, int(m.sum()), eos) for f in self.processed)
                                for m in mask]

    def keep(self, going: torch.Tensor):
        """Keep the rows where `going` (one bool per row) holds, in order; the others leave with their states."""
        if going.all():
            return
        if not going.any():
            self.cache = self.mask = self.last = self.logits = None
            self.history, self.processors = [], []
            return
        rows = going.nonzero()[:, 0]
        if self.processed:
            self.history = [h for h, g in zip(self.history, going.tolist()) if g]
            self.processors = [p for p, g in zip(self.processors, going.tolist()) if g]
        self.cache.batch_select_indices(rows)
        self.mask, self.last, self.logits = self.mask[rows], self.last[rows], self.logits[rows]
        # Columns that are padding in every row left go too (a sliding-window layer's own length is its own).
        start = int(self.mask.any(0).long().argmax()) if self.joinable else 0
        if start:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[..., start:, :], layer.values[..., start:, :]
            self.mask = self.mask[:, start:]

    def scores(self) -> torch.Tensor:
        """Each row's scores for its next token, in float32, after the generation config's logits processors."""
        logits = self.logits.float()
        if self.processed:
            logits = torch.cat([p(h[None], row[None]) for p, h, row in zip(self.processors, self.history, logits)])
        return logits

    @torch.inference_mode()
    def step(self, token: torch.Tensor):
        """Feed each row its next token (one per row); `logits` become the scores of the token after it."""
        if self.processed:
            self.history = [torch.cat([h, t[None]]) for h, t in zip(self.history, token)]
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.mask), 1)], 1)
        self.last = self.last + 1
        out = self.model(input_ids=token[:, None], attention_mask=self.mask, position_ids=self.last[:, None],
                         use_cache=True, **{self.kw: self.cache})
        self.cache, self.logits = output_cache(out), out.logits[:, -1]


@torch.inference_mode()
def decode(model, enc: dict, max_new_tokens: int, pick, eos) -> list[list[int]]:
    """Each row's new tokens (its end-of-sequence token last, where it ended), from `enc` as `_encode` lays
    a batch out; for a model that `decodes_alone`.

    Unlike `generate`, a row leaves the batch once it has ended (`Rows`): a batch's decode runs as long as its
    longest answer, and one answer that loops to the token limit would otherwise keep every finished row
    computing beside it. Greedy tokens are `generate`'s, up to the rounding of a different batch shape.
    Sampled ones are other draws: the random numbers are drawn for the rows still running only."""
    out = [[] for _ in range(len(enc["input_ids"]))]
    if max_new_tokens < 1:
        return out
    rows = Rows(model, eos)
    rows.join(enc)
    eos = rows.eos.to(rows.mask.device)
    live = torch.arange(len(out), device=rows.mask.device)  # the batch row of each row still decoding
    for step in range(max_new_tokens):
        token = pick(rows.scores())
        for row, t in zip(live.tolist(), token.tolist()):
            out[row].append(t)
        going = ~torch.isin(token, eos)
        if step == max_new_tokens - 1 or not going.any():
            break
        rows.keep(going)
        live, token = live[going], token[going]
        rows.step(token)
    return out


@torch.inference_mode()
def generate_whole(model, enc: dict, max_new_tokens: int, temperature: float, top_p: float | None,
                   pad_token_id) -> list[list[int]]:
    """Each row's new tokens from transformers' `generate`, which computes every row to the batch's end: for
    a model that does not `decodes_alone`."""
    gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id,
                         **sampling_kwargs(temperature, top_p))
    return gen[:, enc["input_ids"].shape[1]:].tolist()


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        tok.chat_template = PLAIN_TEMPLATE
    return tok


def load_model(spec: str, device: str = "auto", trust_remote_code: bool = False, dtype=torch.float32):
    """Load (model, tokenizer, resolved_path); errors name the spec. Loading in `dtype`, rather than casting
    afterwards, keeps buffers such as the rotary frequencies in float32, where positions stay exact."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(spec)
    try:
        tok = load_tokenizer(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise CharterError(f"model {spec!r}: cannot load ({str(e).splitlines()[0]}); "
                           "give `default`, a local folder, a .gguf file or a reachable hub id") from None
    model.to(pick_device(device)).eval()
    return model, tok, path


class HFBackend:
    def __init__(self, spec: str = "default", device: str = "auto", model=None, tokenizer=None,
                 progress: bool = True, trust_remote_code: bool = False, precision: str = "auto", **_):
        self.name = spec
        if model is None:
            model, tokenizer, _ = load_model(spec, device, trust_remote_code,
                                             dtype=resolve_dtype(precision, pick_device(device)))
        self.model, self.tok = model, tokenizer
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype  # part of the generation cache's key
        self.progress = progress
        self.max_context = getattr(model.config, "max_position_embeddings", 2048) or 2048
        self.truncated = 0  # prompts cut to fit the context
        self._cache_kw = cache_kwarg(model)
        # Where an answer ends: the generation config's end-of-sequence ids, as `generate` reads them.
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = eos if eos is not None else self.tok.eos_token_id
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self.decodes_alone = decodes_alone(model)  # else `generate` decodes, every row to its batch's end

    def render(self, messages, add_generation_prompt=True) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    @torch.inference_mode()
    def generate(self, prompts, params: GenParams) -> list[str]:
        texts = [self.render(m) for m in prompts]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = [""] * len(texts)
        bs = max(1, params.batch_size)
        batches = [order[i:i + bs] for i in range(0, len(order), bs)]
        for b, idx in enumerate(tqdm(batches, desc="generate", disable=not self.progress or len(batches) < 2,
                                     leave=False)):
            enc = self._encode([texts[i] for i in idx], params.max_new_tokens)
            torch.manual_seed(params.seed * 100003 + b)
            if self.decodes_alone:
                new = decode(self.model, enc, params.max_new_tokens, next_token(params.temperature, params.top_p),
                             self.eos)
            else:
                new = generate_whole(self.model, enc, params.max_new_tokens, params.temperature, params.top_p,
                                     self.tok.pad_token_id)
            for i, row in zip(idx, self.tok.batch_decode(new, skip_special_tokens=True)):
                out[i] = row.strip()
        return out

    @torch.inference_mode()
    def _encode(self, texts, budget, share: bool = True) -> dict:
        """`generate` arguments for a batch, laid out [shared opening | left padding | own tokens].

        Every chat prompt opens with the same system turn and user header, and a few-shot prompt (GSM8K's four
        worked problems) with the same examples. Causal attention makes those states the same in every row, so
        with `share` the opening is run once, its key/value states are repeated across the batch, and each row
        is prefilled from where it differs. Positions come from the attention mask, so each row's tokens keep the
        positions they have when the prompt is run whole. Without a shared opening (under 8 tokens, `share`
        off, a cache that cannot be shared) this is plain left padding.

        `budget` is the tokens each answer may take (one for all, or one per text): a prompt that would leave
        less than that of the context is cut to fit, whatever the prompts beside it."""
        rows = [self.tok(t, add_special_tokens=False).input_ids for t in texts]
        budgets = [budget] * len(rows) if isinstance(budget, int) else list(budget)
        limits = [max(1, self.max_context - b) for b in budgets]
        cut = sum(len(r) > n for r, n in zip(rows, limits))
        if cut:
            # Keep the end of the prompt: the request and the generation prompt live there.
            self.truncated += cut
            log.warning("%d prompt(s) longer than the context less their answers' tokens were truncated", cut)
            rows = [r[-n:] for r, n in zip(rows, limits)]
        k = common_prefix_len(rows) if share and len(rows) > 1 else 0
        kv = prefix_states(self.model, rows[0][:k])[1] if k >= 8 else None
        k = k if kv is not None else 0
        width = max(map(len, rows)) - k
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        ids = torch.tensor([rows[0][:k] + [pad] * (width - len(r) + k) + r[k:] for r in rows], device=self.device)
        mask = torch.tensor([[1] * k + [0] * (width - len(r) + k) + [1] * (len(r) - k) for r in rows],
                            device=self.device)
        enc = {"input_ids": ids, "attention_mask": mask}
        if kv is not None:
            enc[self._cache_kw] = repeated_cache(kv, len(rows), self.model)
        return enc

    @torch.inference_mode()
    def _logits(self, texts):
        self.tok.padding_side = "right"
        enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        return self.model(**enc).logits.float().log_softmax(-1), enc

    @torch.inference_mode()
    def score(self, contexts, continuations) -> list[float]:
        out = []
        for c, x in zip(contexts, continuations):
            ctx = self.tok(c, add_special_tokens=False).input_ids
            full = self.tok(c + x, add_special_tokens=False).input_ids
            ids = torch.tensor([full], device=self.device)
            logp = self.model(input_ids=ids).logits.float().log_softmax(-1)[0]
            targets = ids[0, len(ctx):]
            out.append(float(logp[len(ctx) - 1:-1].gather(-1, targets[:, None]).sum()))
        return out

    @torch.inference_mode()
    def next_token_logprobs(self, contexts, options) -> list[list[float]]:
        """Log-probs of each option's first token after each context.

        Judge contexts share a long prefix (chat template, instructions, few-shot example): it is run once,
        its KV cache repeated across the batch, and only each context's own suffix is computed."""
        option_ids = option_token_ids(lambda o: self.tok(o, add_special_tokens=False).input_ids, options)
        ids = [self.tok(c, add_special_tokens=False).input_ids for c in contexts]
        k = common_prefix_len(ids) if len(ids) > 1 else 0
        kv = prefix_states(self.model, ids[0][:k])[1] if k >= 8 else None  # under 8 tokens, nothing worth sharing
        if kv is None:
            logp, enc = self._logits(list(contexts))
            last = enc.attention_mask.sum(1) - 1
            return logp[torch.arange(len(contexts)), last][:, option_ids].tolist()
        n, dev = len(ids), self.device
        cache = repeated_cache(kv, n, self.model)
        suffix = [x[k:] for x in ids]
        width = max(map(len, suffix))
        pad = self.tok.pad_token_id
        inp = torch.tensor([s + [pad] * (width - len(s)) for s in suffix], device=dev)
        mask = torch.tensor([[1] * (k + len(s)) + [0] * (width - len(s)) for s in suffix], device=dev)
        pos = (k + torch.arange(width, device=dev)).expand(n, width)
        logits = self.model(input_ids=inp, attention_mask=mask, position_ids=pos, **{self._cache_kw: cache}).logits
        last = torch.tensor([len(s) - 1 for s in suffix], device=dev)
        rows = logits[torch.arange(n, device=dev), last].float().log_softmax(-1)
        return rows[:, option_ids].tolist()
