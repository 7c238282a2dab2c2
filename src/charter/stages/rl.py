"""Stage 7 (optional): online RL from AI feedback, the second phase of the CAI paper (section 4), with GRPO.

The policy samples `num_generations` responses to each training prompt and the supervisor scores every
one with a two-sided reward (`supervise.reward`): declining what it finds harmful and answering what it
finds harmless both earn reward. Offline DPO on fixed pairs moves one global "refuse" knob; here the
model is rewarded for its own answers on the same kind of prompt both ways, which is what ties refusing
to the request.

Why GRPO (Shao et al. 2024, arXiv 2402.03300): its baseline is the mean reward of the prompt's own
samples, so there is no value model to train or hold in memory (PPO's), and it takes any scalar reward,
unlike online DPO, which needs a pairwise judge in the loop. RLOO would serve as well; TRL's GRPO
trainer is the one it maintains most. The KL penalty (`rl.beta`) keeps the policy near where it started.

Progress (reward, refusal rate per prompt label, KL) goes to `rl/progress.jsonl` every `rl.log_every`
steps. A checkpoint every `rl.save_every` steps lets a killed stage resume; checkpoints are deleted once
the model is saved.
"""
from __future__ import annotations

import json

from .. import records
from ..evals.refusal import is_refusal
from ..supervise.reward import request_scorer, two_sided
from ..train import fit, last_checkpoint, work_dir
from .common import CALIBRATION, RL_MODEL, RL_PROGRESS, SFT_MODEL, messages, train_prompts

INPUTS = [CALIBRATION, SFT_MODEL]  # and DPO's model when the run trains one (`start_role`)
OUTPUTS = [RL_MODEL, RL_PROGRESS]


def start_role(run) -> str:
    """RL trains the model the stage before it made: DPO's when the run trains one, else SFT's."""
    return "dpo" if run.cfg.dpo.enabled else "sft"


def supervisor_reward(quality_weight: float):
    """A reward function in TRL's form; `p_harm` and `label` come from the dataset's columns."""
    def reward(prompts, completions, p_harm, label, log_metric=None, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        if log_metric is not None:  # refusal rate per label, beside TRL's reward and KL in the logs
            for lab in ("harmful", "benign"):
                got = [is_refusal(t) for t, lb in zip(texts, label) if lb == lab]
                if got:
                    log_metric(f"refused_{lab}", sum(got) / len(got))
        return [two_sided(p, t, quality_weight) for p, t in zip(p_harm, texts)]
    return reward


def progress_callback(path, every: int):
    """Append the trainer's logs (reward, refusal rates, KL, loss) to `path` every `every` steps."""
    from transformers import TrainerCallback

    keep = ("reward", "reward_std", "kl", "loss", "refused_harmful", "refused_benign", "completions/mean_length")

    class Progress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and state.global_step % every == 0 and "reward" in logs:
                row = {"step": state.global_step, **{k: round(logs[k], 4) for k in keep if k in logs}}
                with open(path, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return Progress()


def train(run, rows, reward_funcs, start: str, name: str = "rl") -> dict:
    """GRPO from model `start` on `rows` (each with a `prompt` in chat form) and save models/`name`."""
    from trl import GRPOConfig, GRPOTrainer

    cfg = run.cfg.rl
    progress = run.path(RL_PROGRESS)
    progress.parent.mkdir(parents=True, exist_ok=True)
    ckpt = last_checkpoint(work_dir(run, name))
    if ckpt is None:
        progress.unlink(missing_ok=True)  # a fresh start, not a resume: an earlier attempt's log goes
    elif progress.exists():  # the steps after the checkpoint run again and are logged again
        step = int(ckpt.rsplit("-", 1)[1])
        logged = [json.loads(x) for x in progress.read_text().splitlines() if x.strip()]
        progress.write_text("".join(json.dumps(r) + "\n" for r in logged if r.get("step", 0) <= step))
    return fit(run, GRPOTrainer, GRPOConfig, cfg, rows, start, name, resume=True,
               trainer_kw={"reward_funcs": reward_funcs, "callbacks": [progress_callback(progress, cfg.log_every)]},
               num_generations=cfg.num_generations, max_completion_length=cfg.max_new_tokens,
               temperature=cfg.temperature, beta=cfg.beta, logging_steps=cfg.log_every,
               save_strategy="steps", save_steps=cfg.save_every, save_total_limit=1)


def run(run):
    from .label import gate

    override = gate(run)  # the reward is the supervisor's verdict: the same gate as its labels
    prompts = train_prompts(run)
    p_harm = request_scorer(run.supervisor)([p["prompt"] for p in prompts])
    rows = [{"prompt": messages(run, p["prompt"]), "label": p["label"], "p_harm": round(h, 4)}
            for p, h in zip(prompts, p_harm)]
    stats = train(run, rows, [supervisor_reward(run.cfg.rl.quality_weight)], start_role(run))
    log = records.read(run.path(RL_PROGRESS))
    first, last = (log[0], log[-1]) if log else ({}, {})
    return {"prompts": len(rows), "start": start_role(run),
            "reward_first": first.get("reward"), "reward_last": last.get("reward"), **stats} | (
        {"gate_override": override} if override else {})
