"""DPO with each pair in one row: the prompt is run once, not once per answer, and the loss is ours.

TRL's DPO trainer lays a batch out as two rows per pair, prompt + chosen and prompt + rejected, each padded to
the batch's longest. Here a pair is one row, [prompt | chosen | rejected]: the rejected answer's positions
restart where the prompt ends, and an attention mask keeps it from seeing the chosen answer, so each answer is
scored exactly as in a sequence of its own. Everything else (tokenising with the chat template, reference
log-probs computed once, logging, checkpoints, LoRA) stays TRL's. The loss is our own as well: TRL's `sigmoid`
loss ignores `label_smoothing`, so the conservative DPO that `dpo.labels: soft` asks for would silently be
plain DPO. The mask is dense (one L x L per row), which FlashAttention kernels do not take: attention
runs through the kernels that accept a mask (sdpa, eager).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from trl import DPOTrainer


def dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta: float, smoothing: float = 0.0):
    """Per-pair DPO loss (Rafailov et al. 2023, eq. 7) on summed answer log-probs. With `smoothing` ε it is
    conservative DPO (Mitchell 2023): each label is taken to be flipped with probability ε."""
    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    return -(1 - smoothing) * F.logsigmoid(margin) - smoothing * F.logsigmoid(-margin)


@dataclass
class PackedPairs:
    """Collates TRL's tokenised pairs (`prompt_ids`, `chosen_ids`, `rejected_ids`) into one row each.

    `max_length` cuts each answer so that prompt + answer fits, as it would in a row of its own. The batch holds
    `pair_mask` (batch, 1, L, L; True where a query may attend), `position_ids`, and, for the answer tokens of
    the whole batch flattened: `src` (the position that predicts each token), `tgt` (the token) and `seg`
    (2 * row for a chosen token, 2 * row + 1 for a rejected one)."""

    pad_token_id: int
    max_length: int | None = None

    def __call__(self, examples: list[dict]) -> dict:
        parts = []
        for ex in examples:
            p, c, r = ex["prompt_ids"], ex["chosen_ids"], ex["rejected_ids"]
            if self.max_length:
                room = max(self.max_length - len(p), 0)
                c, r = c[:room], r[:room]
            parts.append((p, c, r))
        width = max(len(p) + len(c) + len(r) for p, c, r in parts)
        n = len(parts)
        ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        pos = torch.zeros((n, width), dtype=torch.long)
        # Padding queries see only themselves, so no row of the mask is empty (an empty row gives NaN).
        mask = torch.eye(width, dtype=torch.bool).repeat(n, 1, 1, 1)
        src, tgt, seg = [], [], []
        for b, (p, c, r) in enumerate(parts):
            P, C, R = len(p), len(c), len(r)
            row = p + c + r
            ids[b, : len(row)] = torch.tensor(row)
            pos[b, : len(row)] = torch.tensor([*range(P + C), *range(P, P + R)])
            mask[b, 0, : len(row), : len(row)] = torch.ones(len(row), len(row), dtype=torch.bool).tril()
            mask[b, 0, P + C : len(row), P : P + C] = False  # the rejected answer does not see the chosen one
            off = b * width
            src += [off + P - 1 + i for i in range(C)] + [off + (P - 1 if j == 0 else P + C + j - 1) for j in range(R)]
            tgt += c + r
            seg += [2 * b] * C + [2 * b + 1] * R
        out = {"input_ids": ids, "position_ids": pos, "pair_mask": mask, "src": torch.tensor(src, dtype=torch.long),
               "tgt": torch.tensor(tgt, dtype=torch.long), "seg": torch.tensor(seg, dtype=torch.long)}
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in examples[0]:
                out[key] = torch.tensor([ex[key] for ex in examples])
        return out


def pair_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of each row's chosen and of its rejected answer. The output layer projects only the
    positions that predict an answer token: over a 49k-word vocabulary, the prompt's logits would be most
    of the work and are never used."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT keeps LoRA inside
    mask = batch["pair_mask"]
    if inner.config._attn_implementation == "eager":  # eager attention adds its mask to the scores
        mask = torch.zeros(mask.shape, dtype=inner.dtype, device=mask.device).masked_fill(~mask, torch.finfo(inner.dtype).min)
    hidden = inner.get_decoder()(input_ids=batch["input_ids"], attention_mask=mask,
                                 position_ids=batch["position_ids"], use_cache=False).last_hidden_state
    logits = inner.get_output_embeddings()(hidden.flatten(0, 1)[batch["src"]]).float()
    cap = getattr(inner.config, "final_logit_softcapping", None)  # Gemma 2 caps its logits in its own forward
    if cap:
        logits = cap * torch.tanh(logits / cap)
    token = logits.gather(-1, batch["tgt"][:, None])[:, 0] - logits.logsumexp(-1)  # no second vocab-wide tensor
    sums = torch.zeros(2 * batch["input_ids"].shape[0], device=token.device).index_add(0, batch["seg"], token)
    return sums[0::2], sums[1::2]


class PackedDPOTrainer(DPOTrainer):
    """TRL's DPO trainer with the packed layout and loss above (sigmoid loss only: charter uses no other)."""

    def __init__(self, *args, processing_class=None, **kw):
        kw.setdefault("data_collator", PackedPairs(processing_class.pad_token_id, kw["args"].max_length))
        super().__init__(*args, processing_class=processing_class, **kw)

    def compute_ref_log_probs(self, model, inputs):
        adapter = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
        with torch.no_grad(), adapter, self.accelerator.autocast():
            return pair_logps(model if self.ref_model is None else self.ref_model, inputs)

    def _compute_loss(self, model, inputs, return_outputs):
        # Accelerate autocasts the model's own forward, which this path goes around; so autocast here, as the
        # reference log-probs were.
        with self.accelerator.autocast():
            chosen, rejected = pair_logps(model, inputs)
        if "ref_chosen_logps" in inputs:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = self.compute_ref_log_probs(model, inputs)
        loss = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta, self.label_smoothing).mean()
        mode = "train" if model.training else "eval"
        reward_c, reward_r = self.beta * (chosen - ref_chosen).detach(), self.beta * (rejected - ref_rejected).detach()
        for key, val in (("rewards/chosen", reward_c.mean()), ("rewards/rejected", reward_r.mean()),
                         ("rewards/margins", (reward_c - reward_r).mean()),
                         ("rewards/accuracies", (reward_c > reward_r).float().mean()),
                         ("logps/chosen", chosen.detach().mean()), ("logps/rejected", rejected.detach().mean())):
            self._metrics[mode][key].append(val.item())
        return (loss, None) if return_outputs else loss
