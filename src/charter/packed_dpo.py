"""DPO with each pair in one row: the prompt is run once, not once per answer, and the loss is ours.

TRL's DPO trainer lays a batch out as two rows per pair, prompt + chosen and prompt + rejected, each padded to
the batch's longest. Here a pair is one row, [prompt | chosen | rejected]: the rejected answer's positions
restart where the prompt ends, and an attention mask keeps it from seeing the chosen answer, so each answer is
scored exactly as in a sequence of its own. Everything else (tokenising with the chat template, reference
log-probs computed once, logging, checkpoints, LoRA) stays TRL's. The loss is our own as well: TRL's `sigmoid`
loss ignores `label_smoothing`, so the conservative DPO that `dpo.labels: soft` asks for would silently be
plain DPO. The mask is dense (one L x L per row), which FlashAttention kernels do not take: attention
runs through the kernels that accept a mask (sdpa, eager). The answer logits are not computed in chunks, as
TRL's fused head does, so a very large vocabulary costs memory in proportion.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from trl import DPOTrainer

from .errors import CharterError


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
        # Padding queries see only themselves: some attention kernels give NaN for a row with nothing to attend to.
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


def pair_logps(model, batch, direct: bool = True, **forward_kw):
    """Summed log-probs of each row's chosen and of its rejected answer, and the model's outputs (None when
    `direct`). Only the positions that predict an answer token are projected to logits: over a 49k-word
    vocabulary, the prompts' logits would be most of the work and are never used.

    `direct` runs the decoder, then the output layer on exactly those positions. Otherwise the model's own
    forward runs, for the positions that predict an answer token in any row (it keeps the same positions in
    every row, so it projects some that no row reads): a wrapper's forward (DDP's, DeepSpeed's) then does its
    part, and a model's own logit scaling applies."""
    ids, pos, mask, src = batch["input_ids"], batch["position_ids"], batch["pair_mask"], batch["src"]
    inner = getattr(model, "module", model)
    if inner.config._attn_implementation == "eager":  # eager attention adds its mask to the scores
        mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
    out = None
    if direct:
        inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # PEFT keeps LoRA inside
        hidden = inner.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=pos,
                                     use_cache=False).last_hidden_state
        logits = inner.get_output_embeddings()(hidden.flatten(0, 1)[src]).float()
        cap = getattr(inner.config, "final_logit_softcapping", None)  # Gemma 2 caps its logits in its forward
        if cap:
            logits = cap * torch.tanh(logits / cap)
    else:
        width = ids.shape[1]
        row, col = src // width, src % width
        keep = torch.unique(col)  # sorted
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep, use_cache=False,
                    **forward_kw)
        logits = out.logits[row, torch.searchsorted(keep, col)].float()
    token = logits.gather(-1, batch["tgt"][:, None])[:, 0] - logits.logsumexp(-1)  # no second vocab-wide tensor
    sums = torch.zeros(2 * ids.shape[0], device=token.device).index_add(0, batch["seg"], token)
    return sums[0::2], sums[1::2], out


class PackedDPOTrainer(DPOTrainer):
    """TRL's DPO trainer with the packed layout and loss above. It takes what charter's dpo stage sets
    (the sigmoid loss, reference log-probs computed before training) and refuses the TRL options it does not
    implement, rather than ignore them."""

    def __init__(self, *args, processing_class=None, **kw):
        a = kw["args"]
        unsupported = {"loss_type": a.loss_type not in ("sigmoid", ["sigmoid"]), "use_weighting": a.use_weighting,
                       "ld_alpha": a.ld_alpha is not None, "f_divergence_type": a.f_divergence_type != "reverse_kl",
                       "truncation_mode": a.truncation_mode != "keep_start",
                       "precompute_ref_log_probs": not a.precompute_ref_log_probs}
        if any(unsupported.values()):
            raise ValueError(f"PackedDPOTrainer does not implement {[k for k, v in unsupported.items() if v]}")
        config = kw["model"].config.get_text_config()
        window = getattr(config, "sliding_window", None)
        if window and getattr(config, "use_sliding_window", True) and window < a.max_length:
            # A custom 4D mask replaces the model's own, so a window shorter than the rows would not be applied.
            raise CharterError(f"dpo: the model attends within a sliding window of {window} tokens, shorter than "
                               f"dpo.max_length ({a.max_length}); set dpo.max_length to at most {window}")
        # Going around the model's forward is right only where nothing else happens in it: one process (no
        # DDP or DeepSpeed wrapper), no router loss (mixtures of experts), no logit scaling of its own. Set
        # before TRL's constructor, which computes the reference log-probs.
        from accelerate import PartialState

        self.direct = PartialState().num_processes == 1 and not any(
            hasattr(config, k) for k in ("output_router_logits", "logit_scale", "logits_scaling"))
        kw.setdefault("data_collator", PackedPairs(processing_class.pad_token_id, a.max_length))
        super().__init__(*args, processing_class=processing_class, **kw)

    def compute_ref_log_probs(self, model, inputs):
        adapter = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
        with torch.no_grad(), adapter, self.accelerator.autocast():
            return pair_logps(model if self.ref_model is None else self.ref_model, inputs, self.direct)[:2]

    def _compute_loss(self, model, inputs, return_outputs):
        # Accelerate autocasts a prepared model's forward, which the direct path goes around; the reference
        # log-probs were computed under this same autocast, and a step must round as they did.
        with self.accelerator.autocast():
            chosen, rejected, out = pair_logps(model, inputs, self.direct, **(
                {"output_router_logits": True} if self.aux_loss_enabled else {}))
        ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        loss = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta, self.label_smoothing).mean()
        if self.aux_loss_enabled:  # a mixture of experts' load-balancing term, as TRL adds it
            loss = loss + self.router_aux_loss_coef * out.aux_loss
        mode = "train" if model.training else "eval"
        reward_c, reward_r = self.beta * (chosen - ref_chosen).detach(), self.beta * (rejected - ref_rejected).detach()
        reward_c, reward_r, chosen, rejected = self.accelerator.gather_for_metrics(
            (reward_c, reward_r, chosen.detach(), rejected.detach()))
        for key, val in (("rewards/chosen", reward_c.mean()), ("rewards/rejected", reward_r.mean()),
                         ("rewards/margins", (reward_c - reward_r).mean()),
                         ("rewards/accuracies", (reward_c > reward_r).float().mean()),
                         ("logps/chosen", chosen.mean()), ("logps/rejected", rejected.mean())):
            self._metrics[mode][key].append(val.item())
        return (loss, out) if return_outputs else loss
