"""DPO with each pair in one row (`charter.packed_dpo`): the same log-probs as each answer run alone, the loss
of conservative DPO, and a trainer whose first step starts from the reference (loss log 2)."""
import math

import pytest
import torch

from charter.packed_dpo import PackedDPOTrainer, PackedPairs, dpo_loss, pair_logps

PAIRS = [{"prompt_ids": [5, 6, 7, 8], "chosen_ids": [9, 10, 11], "rejected_ids": [12, 13]},
         {"prompt_ids": [20, 21], "chosen_ids": [22], "rejected_ids": [23, 24, 25, 26, 27]},
         {"prompt_ids": [30, 31, 32, 33, 34, 35, 36], "chosen_ids": [40, 41, 42, 43], "rejected_ids": [44]}]


def alone(model, prompt, answer):
    """Summed log-prob of `answer` after `prompt`, in a sequence of its own: no padding, nothing packed."""
    ids = torch.tensor([prompt + answer])
    logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    return sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(answer))


@pytest.fixture(scope="module")
def model(tiny_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()


@pytest.mark.parametrize("attn,direct", [("sdpa", True), ("eager", True), ("sdpa", False)])
def test_packed_rows_score_each_answer_as_if_alone(model, attn, direct):
    """Both paths: the decoder and output layer called directly, and the model's own forward."""
    model.config._attn_implementation = attn
    try:
        with torch.no_grad():
            chosen, rejected, _ = pair_logps(model, PackedPairs(pad_token_id=1)(PAIRS), direct)
    finally:
        model.config._attn_implementation = "sdpa"
    want_c = [alone(model, p["prompt_ids"], p["chosen_ids"]) for p in PAIRS]
    want_r = [alone(model, p["prompt_ids"], p["rejected_ids"]) for p in PAIRS]
    assert chosen.tolist() == pytest.approx(want_c, abs=1e-4)
    assert rejected.tolist() == pytest.approx(want_r, abs=1e-4)


def test_max_length_cuts_each_answer_as_its_own_sequence(model):
    """With max_length 6, the first pair keeps 2 tokens of each answer (prompt 4 + 2), as two rows would."""
    with torch.no_grad():
        chosen, rejected, _ = pair_logps(model, PackedPairs(pad_token_id=1, max_length=6)(PAIRS[:1]))
    assert chosen.item() == pytest.approx(alone(model, [5, 6, 7, 8], [9, 10]), abs=1e-4)
    assert rejected.item() == pytest.approx(alone(model, [5, 6, 7, 8], [12, 13]), abs=1e-4)


def test_conservative_dpo_stops_at_the_noise_level():
    """Plain DPO keeps lowering its loss as the margin grows; with label noise ε the loss is lowest where
    sigmoid(margin) = 1 - ε (Mitchell 2023), so it stops pushing the pair apart there."""
    eps = 0.2
    best = math.log((1 - eps) / eps)
    z = torch.zeros(3)

    def loss(m, smoothing):
        return dpo_loss(torch.tensor(m) / 0.1, z[0], z[1], z[2], beta=0.1, smoothing=smoothing).item()

    assert loss(best, eps) < loss(best - 0.3, eps) and loss(best, eps) < loss(best + 0.3, eps)
    assert loss(best + 0.3, 0.0) < loss(best, 0.0)
    assert loss(0.0, 0.0) == pytest.approx(math.log(2))


@pytest.mark.parametrize("lora,forward", [(False, False), (True, False), (False, True)])
def test_first_step_starts_from_the_reference_and_training_moves_weights(tiny_model, tmp_path, lora, forward):
    """In bfloat16 autocast, the reference log-probs (computed before training) and the first step's must be
    computed alike: policy = reference there, so the rewards are 0 and the loss is log 2."""
    from datasets import Dataset
    from trl import DPOConfig as TRLConfig

    from charter.config import DPOConfig
    from charter.train import load_trainable, lora_config, save_model, trl_args

    model, tok = load_trainable(str(tiny_model), "cpu")
    if forward:  # a config naming a logit scale of its own takes the path through the model's forward
        model.config.logit_scale = 1.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    words = "the cat sat on a mat and then it went to sleep".split()
    rows = [{"prompt": [{"role": "user", "content": " ".join(words[i:i + 4])}],
             "chosen": [{"role": "assistant", "content": " ".join(words[i + 1:i + 6])}],
             "rejected": [{"role": "assistant", "content": words[i]}]} for i in range(6)]
    cfg = DPOConfig(max_steps=3, batch_size=2, lr=1e-2, lora=lora, lora_r=4)
    args = trl_args(TRLConfig, cfg, tmp_path / "work", 0, "cpu", precision="bfloat16", beta=cfg.beta,
                    precompute_ref_log_probs=True, disable_tqdm=True)
    tr = PackedDPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                          peft_config=lora_config(cfg))
    assert tr.direct is not forward
    tr.train()
    losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
    first = tr.state.log_history[0]
    # Computed alike, the first step's answers read exactly as the reference did (one autocast path
    # differing gives rewards of about 1e-4 here).
    assert first["rewards/chosen"] == pytest.approx(0, abs=1e-6) and first["rewards/rejected"] == pytest.approx(0, abs=1e-6)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert losses[-1] < losses[0]
    if lora:  # the reference is the policy with its adapter disabled: the starting model, however trained
        batch = tr.data_collator([tr.train_dataset[i] for i in range(4)])
        start, _ = load_trainable(str(tiny_model), "cpu")
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            want = torch.cat(pair_logps(start, batch)[:2])
            trained = torch.cat(pair_logps(tr.model, batch)[:2])
        assert torch.allclose(torch.cat(tr.compute_ref_log_probs(tr.model, batch)), want, atol=1e-3)
        assert not torch.allclose(trained, want, atol=1e-2)
    save_model(tr.model, tok, tmp_path / "out")
    from transformers import AutoModelForCausalLM

    after = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_options_it_does_not_implement_are_refused_not_ignored(tiny_model, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig as TRLConfig

    from charter.config import DPOConfig
    from charter.errors import CharterError
    from charter.train import load_trainable, trl_args

    model, tok = load_trainable(str(tiny_model), "cpu")
    rows = Dataset.from_list([{"prompt": [{"role": "user", "content": "the cat"}],
                               "chosen": [{"role": "assistant", "content": "sat"}],
                               "rejected": [{"role": "assistant", "content": "mat"}]}])
    cfg = DPOConfig(max_steps=1, batch_size=1, max_length=64)

    def make(**extra):
        args = trl_args(TRLConfig, cfg, tmp_path / "work", 0, "cpu", precision="float32",
                        precompute_ref_log_probs=True, **extra)
        return PackedDPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tok)

    with pytest.raises(ValueError, match="loss_type"):
        make(loss_type=["ipo"])
    model.config.sliding_window = 16  # as Mistral's: the packed mask would replace the window
    with pytest.raises(CharterError, match="sliding window of 16"):
        make()
    model.config.sliding_window = None
    assert make().data_collator.max_length == 64
