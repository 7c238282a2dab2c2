"""Training curves and stage metrics in the experiment tracker a user already watches.

`tracking.report_to` lists the trackers. Training curves go through TRL's own
integrations: the list is passed to its SFT and DPO configs, and `trainer_env`
tells TRL's callbacks where to write. When a stage finishes, `StageLog` sends
its numbers (the counts in the manifest, the supervisor's calibration, the
evaluation's refusal rates and scores) to TensorBoard and MLflow; wandb gets
the training curves only. Each tracker is imported only when it is listed, and
with an empty list (the default) nothing is written or sent.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from .errors import CharterError
from .stages.common import CALIBRATION, METRICS, TRACKING

EXPERIMENT = "charter"
# Files a stage writes whose numbers are worth a chart, beside the counts it returns.
STAGE_FILES = {"supervise": CALIBRATION, "evaluate": METRICS}
_SKIP = {"by_category", "ci95"}  # per-category breakdowns and interval ends would swamp the dashboard
_ODD = re.compile(r"[^A-Za-z0-9_.\- /:]")  # characters MLflow refuses in a metric name


def _require(name: str):
    module = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}[name]
    if importlib.util.find_spec(module) is None:
        raise CharterError(f"tracking.report_to: {name} is not installed (pip install 'charter[tracking]' "
                           f"or pip install {module})")


def mlflow_uri(run) -> str:
    """MLFLOW_TRACKING_URI when set, else a SQLite store inside the run directory (no server, no network;
    MLflow 3 no longer accepts a plain folder store without an opt-in)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    path = Path(run.path(TRACKING, "mlflow.db")).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def trl_kwargs(run, stage: str) -> dict:
    """Arguments for TRL's config: which trackers get the training curves, under which run name."""
    report = list(run.cfg.tracking.report_to)
    return {"report_to": report, "run_name": f"{run.dir.name}-{stage}"} if report else {}


@contextmanager
def trainer_env(run, stage: str):
    """Settings TRL's tracker callbacks read from the environment when a trainer is built: TensorBoard's
    folder (one per stage, so SFT and DPO curves are separate runs) and MLflow's store and experiment."""
    report = run.cfg.tracking.report_to
    env = {}
    if "tensorboard" in report:
        env["TENSORBOARD_LOGGING_DIR"] = str(run.path(TRACKING, "tensorboard", stage))
    if "mlflow" in report:
        env["MLFLOW_TRACKING_URI"] = mlflow_uri(run)
        env["MLFLOW_EXPERIMENT_NAME"] = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def flatten(d, prefix: str) -> dict[str, float]:
    """Numeric leaves of nested dicts as `prefix/a/b` -> value (booleans as 0/1; lists are left out)."""
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}/{_ODD.sub('_', str(k))}"
        if isinstance(v, dict) and k not in _SKIP:
            out.update(flatten(v, key))
        elif isinstance(v, (bool, int, float)):
            out[key] = float(v)
    return out


def stage_metrics(run, stage: str, counts: dict) -> dict[str, float]:
    out = flatten(counts, stage)
    path = run.path(STAGE_FILES[stage]) if stage in STAGE_FILES else None
    if path is not None and path.exists():
        out.update(flatten(json.loads(path.read_text()), stage))
    return out


class Writer(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardWriter:
    def __init__(self, run):
        from torch.utils.tensorboard import SummaryWriter

        self.w = SummaryWriter(log_dir=str(run.path(TRACKING, "tensorboard", "stages")))

    def log(self, metrics, step):
        for k, v in metrics.items():
            self.w.add_scalar(k, v, step)
        self.w.flush()

    def close(self):
        self.w.close()


class MLflowWriter:
    """One MLflow run per run directory; its id is kept in the run so a resumed run logs into the same one."""

    def __init__(self, run):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=mlflow_uri(run))
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(name)
        id_file = run.path(TRACKING, "mlflow_run_id")
        self.run_id = id_file.read_text().strip() if id_file.exists() else None
        try:
            if self.run_id:
                self.client.get_run(self.run_id)
        except Exception:  # noqa: BLE001 - the store moved or was cleared: start a new run
            self.run_id = None
        if not self.run_id:
            self.run_id = self.client.create_run(exp_id, run_name=run.dir.name,
                                                 tags={"charter.config_hash": run.cfg.hash()}).info.run_id
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(self.run_id + "\n")

    def log(self, metrics, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def close(self):
        self.client.set_terminated(self.run_id)


WRITERS = {"tensorboard": TensorBoardWriter, "mlflow": MLflowWriter}


class StageLog:
    """Per-stage metrics to every listed tracker that takes them. Trackers are checked when the run starts,
    so a missing package fails before hours of generation, not at the first training stage."""

    def __init__(self, run):
        self.run = run
        for name in run.cfg.tracking.report_to:
            _require(name)
        self.writers: list[Writer] = [WRITERS[n](run) for n in run.cfg.tracking.report_to if n in WRITERS]

    def stage_done(self, stage: str, counts: dict, step: int = 0):
        if self.writers:
            metrics = stage_metrics(self.run, stage, counts)
            for w in self.writers:
                w.log(metrics, step)

    def close(self):
        for w in self.writers:
            w.close()
        self.writers = []
