"""The `cast` stage on a tiny random model: a refusal direction read from the model's own answers, then a
backend that adds the direction to flagged requests and projects it out of the others."""
import json
import shutil

import pytest
import torch

from charter.backends import GenParams, user
from charter.run import Run, pipeline, trained_roles
from charter.serve.guard import KeywordScorer
from charter.stages import cast, common
from charter.steer import ablated, added, last_states, refusal_direction
from tests.stages.test_pipeline_tiny import seed_calibration, tiny_cfg

pytestmark = pytest.mark.filterwarnings("ignore")
# float32, so that what the hooks remove and add is exact enough to check
CAST = ["dpo.enabled=false", "cast.enabled=true", "cast.max_new_tokens=6", "cast.depth=0.5", "precision=float32"]


def cast_run(tmp_path, tiny_model, monkeypatch):
    run = Run(tiny_cfg(tmp_path, tiny_model, CAST), tmp_path / "out")
    shutil.copytree(tiny_model, run.path(common.SFT_MODEL))
    seed_calibration(run)
    run._supervisor = KeywordScorer("steal,poison,weapon,hack")
    # A random model never says no: the judge here calls every other training answer a refusal, by its id.
    ids = iter(range(10_000))
    monkeypatch.setattr(cast, "refusal_class", lambda text: "full_refusal" if next(ids) % 2 else "full_compliance")
    return run


def test_cast_is_a_model_of_its_own_after_the_trained_ones(tiny_model, tmp_path):
    cfg = tiny_cfg(tmp_path, tiny_model, CAST)
    assert pipeline(cfg)[-3:] == ["cast", "evaluate", "report"] and trained_roles(cfg) == ["sft", "cast"]
    assert "cast" not in pipeline(tiny_cfg(tmp_path, tiny_model))


def test_cast_stage_saves_a_direction_and_steers_each_request_by_its_flag(tiny_model, tmp_path, monkeypatch):
    run = cast_run(tmp_path, tiny_model, monkeypatch)
    run.execute(stages=["cast"])
    m = json.loads(run.path("manifest.json").read_text())["stages"]["cast"]
    assert m["status"] == "done" and m["start"] == "sft" and m["layer"] == 1 and m["direction_norm"] > 0
    assert m["refused"] == m["prompts"] // 2
    steered, plain = run.backend("cast"), Run(run.cfg, run.dir).backend("sft")
    assert steered.name == "models/cast" and steered.inner is not plain
    params = GenParams(8, 0.0, batch_size=4)
    asks = [user("how do I steal a car"), user("how do I bake bread"), user("write a poem about rain")]
    a = steered.generate(asks, params)
    assert steered.flagged == 1 and steered.add == 1.0
    with added(plain.model, steered.direction, steered.layer, 1.0):
        assert a[:1] == plain.generate(asks[:1], params)  # flagged: the direction added
    with added(plain.model, steered.direction, steered.layer, 0.0):  # nothing added: the model as it is
        assert plain.generate(asks, params) == Run(run.cfg, run.dir).backend("sft").generate(asks, params)
    with ablated(plain.model, steered.direction, steered.layer):
        assert a[1:] == plain.generate(asks[1:], params)  # unflagged: the ablated model's answers
    # What the steered layer hands on, read at the next block's input (the model's own `hidden_states` are
    # recorded before forward hooks run, so they do not show the edit).
    unit = steered.direction / steered.direction.norm()
    plain_in = handed_on(plain, asks[1:], steered.layer)
    with ablated(plain.model, steered.direction, steered.layer):
        ablated_in = handed_on(plain, asks[1:], steered.layer)
    assert (plain_in @ unit).abs().max() > 1e-3  # there was something to remove
    assert (ablated_in @ unit).abs().max() < 1e-3 * (plain_in @ unit).abs().max()
    with added(plain.model, steered.direction, steered.layer, 1.0):
        added_in = handed_on(plain, asks[1:], steered.layer)
    err = (added_in - plain_in - steered.direction).norm(dim=-1) / steered.direction.norm()
    assert err.max() < 1e-3, err


def handed_on(backend, asks, layer):
    """The input of decoder block `layer` (the output of layer `layer`, after any steering) at the last token."""
    seen = []
    hook = backend.model.model.layers[layer].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.inference_mode():
            for m in asks:
                enc = backend.tok(backend.render(m), return_tensors="pt", add_special_tokens=False)
                backend.model(**enc)
    finally:
        hook.remove()
    return torch.stack([h[0, -1].float() for h in seen])


def test_refusal_direction_is_within_label_not_harmfulness():
    # Harmful prompts sit at +5 on axis 0, refusals at +1 on axis 1: only axis 1 is the direction of refusing.
    states = torch.tensor([[5.0, 1.0], [5.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    d = refusal_direction(states, ["harmful", "harmful", "benign", "benign"], [True, False, True, False])
    assert torch.allclose(d, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError):
        refusal_direction(states, ["harmful"] * 4, [True] * 4)


def test_a_model_that_never_refuses_gets_a_clear_error(tiny_model, tmp_path, monkeypatch):
    from charter.errors import CharterError

    run = cast_run(tmp_path, tiny_model, monkeypatch)
    monkeypatch.setattr(cast, "refusal_class", lambda text: "full_compliance")
    with pytest.raises(CharterError, match="no refusal direction"):
        run.execute(stages=["cast"])
    assert not run.path(common.CAST_DIR, cast.STEERING).exists()
