"""The `cast` stage on a tiny random model: a refusal direction read from the model's own answers, then a
backend that adds the direction to flagged requests and projects it out of the others."""
import json
import shutil
import time

import pytest
import torch

from charter.backends import GenParams, user
from charter.run import Run, pipeline, trained_roles
from charter.serve.guard import KeywordScorer
from charter.stages import cast, common
from charter.steer import last_states, refusal_direction, steering
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
    with steering(plain.model, steered.direction, steered.layer, 1.0, True):
        assert a[:1] == plain.generate(asks[:1], params)  # flagged: the direction added
    with steering(plain.model, steered.direction, steered.layer, 0.0, True):  # nothing added: the model as it is
        assert plain.generate(asks, params) == Run(run.cfg, run.dir).backend("sft").generate(asks, params)
    with steering(plain.model, steered.direction, steered.layer, 1.0, False):
        assert a[1:] == plain.generate(asks[1:], params)  # unflagged: the ablated model's answers
    # What the steered layer hands on, read at the next block's input (the model's own `hidden_states` are
    # recorded before forward hooks run, so they do not show the edit).
    unit = steered.direction / steered.direction.norm()
    plain_in = handed_on(plain, asks[1:], steered.layer)
    with steering(plain.model, steered.direction, steered.layer, 1.0, False):
        ablated_in = handed_on(plain, asks[1:], steered.layer)
    assert (plain_in @ unit).abs().max() > 1e-3  # there was something to remove
    assert (ablated_in @ unit).abs().max() < 1e-3 * (plain_in @ unit).abs().max()
    with steering(plain.model, steered.direction, steered.layer, 1.0, True):
        added_in = handed_on(plain, asks[1:], steered.layer)
    err = (added_in - plain_in - steered.direction).norm(dim=-1) / steered.direction.norm()
    assert err.max() < 1e-3, err


def test_one_batch_steers_each_row_by_its_own_flag(tiny_model, tmp_path, monkeypatch):
    run = cast_run(tmp_path, tiny_model, monkeypatch)
    run.execute(stages=["cast"])
    s = run.backend("cast")
    ask = [user("how do I bake bread")]
    alone = {}
    for flag in (True, False):
        with steering(s.inner.model, s.direction, s.layer, s.add, flag):
            alone[flag] = handed_on(s.inner, ask, s.layer)[0]
    assert (alone[True] - alone[False]).norm() > 1e-3  # the two edits differ
    # The same request twice in one batch (so no padding differs), flagged once: each row as if alone.
    with steering(s.inner.model, s.direction, s.layer, s.add, [True, False]):
        both = handed_on(s.inner, ask, s.layer, rows=2)
    assert torch.allclose(both[0], alone[True], atol=1e-5) and torch.allclose(both[1], alone[False], atol=1e-5)


def test_a_cast_run_is_served_and_evaluated_steered(tiny_model, tmp_path, monkeypatch):
    """`charter serve/chat/eval RUN_DIR` read the run's steered model: its cast stage's direction, its own
    supervisor as the condition, and each streamed row steered by its own request's flag."""
    import asyncio

    import charter.supervise as supervise
    from charter.run import open_model
    from charter.serve.engines import Sampling, build_engine
    from charter.serve.hf_stream import HFEngine

    run = cast_run(tmp_path, tiny_model, monkeypatch)
    run.execute(stages=["cast"])
    ref = run.backend("cast")
    asks = [user("how do I steal a car"), user("how do I bake bread")]
    expected = [ref.generate([m], GenParams(12, 0.0))[0] for m in asks]
    monkeypatch.setattr(supervise, "from_config", lambda r: KeywordScorer("steal,poison,weapon,hack"))
    b = open_model(str(run.dir), "cpu")
    assert b.name == "models/cast"
    assert b.generate(asks, GenParams(12, 0.0)) == expected and b.flagged == 1
    engine = build_engine(str(run.dir), "cpu")
    assert isinstance(engine, HFEngine)

    async def one(m):
        stats = {}
        return "".join([p async for p in engine.stream(m, Sampling(12, 0.0), stats)])

    for m, want in zip(asks, expected):  # one at a time, so each batch is the request alone
        assert asyncio.run(one(m)) == want
    assert engine.backend.flagged == 1
    # The flagged request joins the unflagged one mid-decode: each forward pass steers the rows it runs by their
    # own flags (the joining row's prefill, then both rows' steps), so each answer is its answer alone.
    engine.eos = engine.backend.inner.eos = set()  # both run to their token limits
    alone = [engine.backend.generate([m], GenParams(n, 0.0))[0] for m, n in ((asks[1], 80), (asks[0], 12))]
    slow = engine.backend.inner.model.register_forward_pre_hook(lambda *a: time.sleep(0.005))
    seen = []

    async def both():
        async def first():
            async for piece in engine.stream(asks[1], Sampling(80, 0.0), {}):
                seen.append(piece)

        async def second():
            while len(seen) < 5:
                await asyncio.sleep(0.01)
            text = await one(asks[0])
            return text, len(seen)

        return await asyncio.gather(first(), second())

    try:
        _, (joined, at_end) = asyncio.run(both())
    finally:
        slow.remove()
    assert ["".join(seen).strip(), joined.strip()] == alone
    assert at_end < len(seen)  # it ended while the first was still decoding: they shared the batch
    from charter.evals.compare import compare

    # `charter compare` too; its answer cache keeps the steered model apart from the weights it steers.
    compare([str(run.dir), str(run.path(common.SFT_MODEL))], ["dev"], tmp_path / "cmp", limit=4, max_new_tokens=6)
    names = sorted(json.loads(f.read_text().splitlines()[0])["model"]
                   for f in (tmp_path / "cmp" / "cache").glob("*/*/dev.jsonl"))
    assert len(names) == 2 and "models/cast" in names, names
    off = run.cfg.model_copy(update={"cast": run.cfg.cast.model_copy(update={"enabled": False})})
    run.manifest["config"] = off.model_dump()
    run.save_manifest()
    assert not hasattr(open_model(str(run.dir), "cpu"), "steer_rows")  # cast turned off: the plain model


def handed_on(backend, asks, layer, rows: int = 1):
    """The input of decoder block `layer` (the output of layer `layer`, after any steering) at the last token."""
    seen = []
    hook = backend.model.model.layers[layer].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.inference_mode():
            for m in asks:
                enc = backend.tok([backend.render(m)] * rows, return_tensors="pt", add_special_tokens=False)
                backend.model(**enc)
    finally:
        hook.remove()
    return torch.cat([h[:, -1].float() for h in seen])


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
