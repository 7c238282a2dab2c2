"""`tracking.report_to`: TRL's training curves and charter's per-stage metrics land in TensorBoard event files
and an MLflow SQLite store inside the run directory; with the default (empty) list nothing is written."""
import json

import pytest

from charter import tracking
from charter.config import load_config
from charter.errors import CharterError
from charter.run import Run
from charter.train import trl_args

pytestmark = pytest.mark.filterwarnings("ignore")

CAL = {"supervisor": "classifier", "passed": True, "gate_accuracy": 0.91, "cache": "somewhere",
       "contrast": {"harmful": {"n": 57, "accuracy": 0.947}, "benign": {"n": 57, "accuracy": 0.912}}}
METRICS = {"models": {"dpo": {"n": {"harmful": 20}, "refusal_rate": {"harmful": 0.85, "benign": None},
                              "ci95": {"harmful": [0.64, 0.95]}, "by_category": {"harmful/x": {"n": 3}}}}}


def make_run(tmp_path, report_to=()):
    cfg = load_config(None, [f"tracking.report_to=[{', '.join(report_to)}]", "device=cpu"])
    run = Run(cfg, tmp_path / "run")
    (run.dir / "supervisor").mkdir(parents=True)
    (run.dir / "supervisor" / "calibration.json").write_text(json.dumps(CAL))
    (run.dir / "eval").mkdir()
    (run.dir / "eval" / "metrics.json").write_text(json.dumps(METRICS))
    return run


def scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(folder))
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def test_stage_metrics_flatten_numbers_and_skip_the_rest(tmp_path):
    run = make_run(tmp_path)
    m = tracking.stage_metrics(run, "supervise", {"passed": True, "gate_accuracy": 0.91})
    assert m == {"supervise/passed": 1.0, "supervise/gate_accuracy": 0.91, "supervise/contrast/harmful/n": 57.0,
                 "supervise/contrast/harmful/accuracy": 0.947, "supervise/contrast/benign/n": 57.0,
                 "supervise/contrast/benign/accuracy": 0.912}
    m = tracking.stage_metrics(run, "evaluate", {"prompts": 10})
    assert m == {"evaluate/prompts": 10.0, "evaluate/models/dpo/n/harmful": 20.0,
                 "evaluate/models/dpo/refusal_rate/harmful": 0.85}
    assert tracking.stage_metrics(run, "sft", {"steps": 2, "first_loss": None, "odd key!": 1}) == {
        "sft/steps": 2.0, "sft/odd key_": 1.0}


def test_default_tracks_nothing(tmp_path):
    run = make_run(tmp_path)
    # Where metrics go does not shape the records, so switching trackers keeps the run directory resumable.
    assert load_config(None, ["tracking.report_to=[mlflow]"]).hash() == load_config(None).hash()
    assert tracking.trl_kwargs(run, "sft") == {}
    log = tracking.StageLog(run)
    log.stage_done("evaluate", {"prompts": 1})
    log.close()
    assert not run.path("tracking").exists()
    from trl import SFTConfig

    assert trl_args(SFTConfig, run.cfg.sft, tmp_path / "w", 0, "cpu").report_to == []


def test_stage_metrics_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    run = make_run(tmp_path, ["tensorboard"])
    log = tracking.StageLog(run)
    log.stage_done("supervise", {"gate_accuracy": 0.91}, step=0)
    log.stage_done("evaluate", {"prompts": 10}, step=7)
    log.close()
    got = scalars(run.path("tracking", "tensorboard", "stages"))
    assert got["evaluate/models/dpo/refusal_rate/harmful"] == [(7, pytest.approx(0.85))]
    assert got["supervise/contrast/benign/accuracy"] == [(0, pytest.approx(0.912))]


def test_stage_metrics_to_mlflow_local_store_and_resume_into_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = make_run(tmp_path, ["mlflow"])
    log = tracking.StageLog(run)
    log.stage_done("supervise", {"gate_accuracy": 0.91})
    log.close()
    again = tracking.StageLog(Run(run.cfg, run.dir))  # a resumed run
    again.stage_done("evaluate", {"prompts": 10}, step=7)
    again.close()
    uri = f"sqlite:///{run.path('tracking', 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=uri)
    (only,) = client.search_runs([client.get_experiment_by_name("charter").experiment_id])
    assert only.info.run_name == "run" and only.info.status == "FINISHED"
    assert only.data.metrics["supervise/contrast/harmful/accuracy"] == pytest.approx(0.947)
    assert only.data.metrics["evaluate/models/dpo/refusal_rate/harmful"] == pytest.approx(0.85)
    assert only.data.tags["charter.config_hash"] == run.cfg.hash()


def test_a_missing_tracker_fails_before_the_run_starts(tmp_path, monkeypatch):
    run = make_run(tmp_path, ["wandb"])
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CharterError, match="wandb is not installed"):
        tracking.StageLog(run)
    with pytest.raises(CharterError, match="wandb is not installed"):
        run.execute(stages=["report"])


@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow"])
def test_trl_training_curves_reach_the_tracker(tmp_path, tiny_model, monkeypatch, tracker):
    """report_to reaches TRL, and its curves land in the run's own tracking folder, one run per stage."""
    import os

    pytest.importorskip(tracker)
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from charter.train import load_trainable

    for var in ("TENSORBOARD_LOGGING_DIR", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    run = make_run(tmp_path, [tracker])
    model, tok = load_trainable(str(tiny_model), "cpu")
    cfg = run.cfg.sft.model_copy(update={"max_steps": 2, "batch_size": 2, "max_length": 32})
    args = trl_args(SFTConfig, cfg, run.path("models", ".sft-work"), 0, "cpu", **tracking.trl_kwargs(run, "sft"))
    assert args.report_to == [tracker] and args.run_name == "run-sft"
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": f"question {i}"}],
                             "completion": [{"role": "assistant", "content": f"answer {i}"}]} for i in range(4)])
    with tracking.trainer_env(run, "sft"):
        SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok).train()
    assert not {"TENSORBOARD_LOGGING_DIR", "MLFLOW_TRACKING_URI"} & set(os.environ)  # restored after the stage
    if tracker == "tensorboard":
        assert [s for s, _ in scalars(run.path("tracking", "tensorboard", "sft"))["train/loss"]] == [1, 2]
    else:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking.mlflow_uri(run))
        (only,) = client.search_runs([client.get_experiment_by_name("charter").experiment_id])
        assert only.info.run_name == "run-sft"
        assert [m.step for m in client.get_metric_history(only.info.run_id, "loss")] == [1, 2]


def test_a_finished_stage_sends_its_counts(tmp_path):
    """The hook in `Run.execute`: each stage that finishes logs its counts and seconds, at its place in the order."""
    pytest.importorskip("tensorboard")
    from charter.run import STAGES

    cfg = load_config(None, ["model=fake", "tracking.report_to=[tensorboard]", "pools.redteam.limit=2",
                             "pools.helpful.limit=1", "pools.lookalike.limit=1"])
    run = Run(cfg, tmp_path / "run")
    run.execute(stages=["generate"])
    got = scalars(run.path("tracking", "tensorboard", "stages"))
    assert got["generate/records"] == [(STAGES.index("generate"), 4.0)]
    assert set(got) == {"generate/records", "generate/seconds"}
