"""The `rl` stage on a tiny random model: GRPO from the SFT model against a reward, with the weights asserted
changed, the reward asserted rising on a toy task, and a killed stage resumed from its checkpoint."""
import json
import shutil

import pytest
import torch

from charter import records
from charter.run import Run
from charter.serve.guard import KeywordScorer
from charter.stages import common, rl
from tests.stages.test_pipeline_tiny import changed, seed_calibration, tiny_cfg, weights

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


RL = ["dpo.enabled=false", "rl.enabled=true", "rl.batch_size=8", "rl.num_generations=4", "rl.max_new_tokens=8",
      "rl.lr=1e-3", "rl.log_every=1", "rl.save_every=1"]


def rl_run(tmp_path, tiny_model, extra=()):
    """A run with its SFT model and calibration seeded, and a keyword supervisor that finds 'steal' harmful."""
    run = Run(tiny_cfg(tmp_path, tiny_model, [*RL, *extra]), tmp_path / "out")
    shutil.copytree(tiny_model, run.path(common.SFT_MODEL))
    seed_calibration(run)
    run._supervisor = KeywordScorer("steal,poison,weapon,hack")
    return run


def test_rl_stage_trains_from_sft_and_logs_progress(tiny_model, tmp_path, monkeypatch):
    # A random model never refuses, so the two-sided reward would give every sample of a prompt the same
    # score and GRPO nothing to learn from: the stage's reward here also counts characters.
    real = rl.two_sided
    monkeypatch.setattr(rl, "two_sided", lambda p, text, w: real(p, text, w) + len(text) / 100)
    run = rl_run(tmp_path, tiny_model, ["rl.max_steps=2"])
    run.execute(stages=["rl"])
    m = json.loads(run.path("manifest.json").read_text())
    assert m["stages"]["rl"]["status"] == "done" and m["stages"]["rl"]["steps"] == 2
    assert m["stages"]["rl"]["start"] == "sft" and m["final_model"] == "models/rl"
    assert changed(weights(run.path(common.SFT_MODEL)), weights(run.path(common.RL_MODEL)))
    log = records.read(run.path(common.RL_PROGRESS))
    assert [r["step"] for r in log] == [1, 2]
    # The reward, the refusal rate on each side and the distance from the start model, every step.
    assert all({"reward", "refused_harmful", "refused_benign", "kl"} <= set(r) for r in log)
    assert not run.path("models", ".rl-work").exists()  # checkpoints (pickled optimizer state) are not kept


def test_rl_is_after_dpo_or_instead_of_it(tiny_model, tmp_path):
    from charter.run import pipeline, trained_roles

    after = tiny_cfg(tmp_path, tiny_model, ["rl.enabled=true"])
    assert pipeline(after)[-4:] == ["dpo", "rl", "evaluate", "report"] and trained_roles(after) == ["sft", "dpo", "rl"]
    instead = tiny_cfg(tmp_path, tiny_model, RL)
    assert "pairs" not in pipeline(instead) and trained_roles(instead) == ["sft", "rl"]
    assert "rl" not in pipeline(tiny_cfg(tmp_path, tiny_model))


def _toy_reward(tok):
    """Reward: the share of a response's words whose token id is even, a task a random model starts at 0.5."""
    def reward(completions, **_):
        out = []
        for c in completions:
            ids = tok(c[-1]["content"], add_special_tokens=False)["input_ids"]
            out.append(sum(i % 2 == 0 for i in ids) / len(ids) if ids else 0.0)
        return out
    return reward


def test_grpo_raises_a_toy_reward(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    run = rl_run(tmp_path, tiny_model, ["rl.max_steps=24", "rl.batch_size=16", "rl.num_generations=8",
                                        "rl.lr=2e-2", "rl.beta=0.0", "rl.temperature=1.0", "rl.save_every=100"])
    rows = [{"prompt": common.messages(run, p["prompt"])} for p in common.train_prompts(run)]
    rl.train(run, rows, [_toy_reward(AutoTokenizer.from_pretrained(str(tiny_model)))], "sft")
    r = [x["reward"] for x in records.read(run.path(common.RL_PROGRESS))]
    assert len(r) == 24
    first, last = sum(r[:6]) / 6, sum(r[-6:]) / 6
    assert last > first + 0.15, r


def test_killed_rl_resumes_from_its_checkpoint(tiny_model, tmp_path):
    from charter.errors import CharterError

    run = rl_run(tmp_path, tiny_model, ["rl.max_steps=3"])
    rows = [{"prompt": common.messages(run, p["prompt"])} for p in common.train_prompts(run)]
    calls = []

    def reward(completions, **_):
        calls.append(1)
        if len(calls) == 3:  # dies in step 3, after checkpoints of steps 1 and 2
            raise CharterError("killed")
        return [float(len(c[-1]["content"])) for c in completions]

    with pytest.raises(CharterError, match="killed"):
        rl.train(run, rows, [reward], "sft")
    assert (run.path("models", ".rl-work") / "checkpoint-2").exists()
    calls.clear()
    calls.append(1)  # the resumed attempt must not die
    stats = rl.train(run, rows, [reward], "sft")
    assert stats["steps"] == 3 and len(calls) == 2  # one step left to run: one reward call
    assert [x["step"] for x in records.read(run.path(common.RL_PROGRESS))] == [1, 2, 3]


def test_a_resumed_rl_logs_each_step_once(tiny_model, tmp_path):
    from charter.errors import CharterError

    run = rl_run(tmp_path, tiny_model, ["rl.max_steps=4", "rl.save_every=2"])
    rows = [{"prompt": common.messages(run, p["prompt"])} for p in common.train_prompts(run)]
    calls = []

    def reward(completions, **_):
        calls.append(1)
        if len(calls) == 4:  # dies in step 4: steps 1-3 logged, the checkpoint is step 2's
            raise CharterError("killed")
        return [float(len(c[-1]["content"])) for c in completions]

    with pytest.raises(CharterError, match="killed"):
        rl.train(run, rows, [reward], "sft")
    assert [x["step"] for x in records.read(run.path(common.RL_PROGRESS))] == [1, 2, 3]
    calls[:] = [1] * 10  # the resumed attempt must not die
    rl.train(run, rows, [reward], "sft")
    assert [x["step"] for x in records.read(run.path(common.RL_PROGRESS))] == [1, 2, 3, 4]  # step 3 once


class Alternating:
    """A scripted policy: of each prompt's samples, some refuse and some answer."""
    name = "models/sft"

    def generate(self, prompts, params):
        return ["I can't help with that." if (params.seed + i) % 2 else "Sure, here is how you do it step by step."
                for i, _ in enumerate(prompts)]


def test_k_sample_pairs_are_the_best_and_worst_under_the_reward(tiny_model, tmp_path):
    from charter.stages import pairs

    run = rl_run(tmp_path, tiny_model, ["dpo.enabled=true", "pairs.samples=4", "pairs.batch_size=3",
                                        "pairs.max_pairs=12"])
    run._backends[run.model_spec("sft")] = Alternating()
    counts = pairs.run(run)
    got = records.read(run.path(common.PAIRS))
    assert counts["pairs"] == len(got) > 0
    for r in got:  # 'steal' and friends are harmful to this supervisor: there the refusal is the better side
        harmful = run.supervisor.request_harm([r["prompt"]])[0] > 0.5
        refusal = "I can't help with that."
        assert (r["a"] == refusal) == harmful and (r["b"] == refusal) != harmful
        assert r["reward_a"] - r["reward_b"] >= pairs.MIN_GAP
    assert len(records.read(run.path(common.PAIRS_SAMPLES))) == 4 * 12
