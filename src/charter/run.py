"""Stage order, resume logic and the manifest.

A run directory holds everything a run makes. `manifest.json` records the
resolved config and its hash, the constitution hash, package versions, and per
stage: status, counts, seconds and peak memory. A finished stage is skipped on
rerun; an unfinished one resumes from the records it already wrote.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import resource
import shutil
import sys
import time
from pathlib import Path

from . import records
from .backends import trained_spec
from .config import RunConfig
from .constitution import BUILTIN, load_constitution
from .errors import CharterError
from .stages.common import MANIFEST
from .tracking import StageLog

log = logging.getLogger("charter")

STAGES = ["supervise", "generate", "revise", "sft", "pairs", "label", "dpo", "rl", "cast", "evaluate", "report"]
TRAINED = ["sft", "dpo", "rl"]  # stages that train a model, saved as models/<stage>


# The first stage that reads each config section. A change anywhere else (the model, the seed, the pools, the
# precision, the system prompt) reaches the first stage; `device` changes no record.
READS = {"supervisor": "supervise", "generate": "generate", "revise": "revise", "sft": "sft", "pairs": "pairs",
         "dpo": "dpo", "rl": "rl", "cast": "cast", "evaluate": "evaluate", "device": None}


def first_changed(old: dict, new: RunConfig, stages: list[str]) -> tuple[str, str] | None:
    """(the earliest of `stages` that a change from config `old`, a manifest's, to `new` reaches; the key
    that changed), or None when nothing that shapes the records changed."""
    from .config import shaping

    a, b = shaping(old), new.shaping()
    hits = []
    for key in set(a) | set(b):
        x, y = a.get(key), b.get(key)
        stage = READS.get(key, STAGES[0])
        if x == y or stage is None:
            continue
        subs = sorted(k for k in {*(x or {}), *(y or {})} if (x or {}).get(k) != (y or {}).get(k)) if isinstance(
            x or y, dict) else []
        if key == "dpo" and "enabled" in subs:
            stage = "pairs"  # pairs, label and dpo join or leave the pipeline
        reach = [i for i, s in enumerate(stages) if STAGES.index(s) >= STAGES.index(stage)]
        if reach:
            hits.append((reach[0], ".".join([key, *subs[:1]])))
    if not hits:
        return None
    i, key = min(hits)
    return stages[i], key


def pipeline(cfg: RunConfig) -> list[str]:
    """The stages this config runs, in order: `dpo.enabled` brings pairs, label and dpo; `rl.enabled`, rl;
    `cast.enabled`, cast."""
    off = set() if cfg.dpo.enabled else {"pairs", "label", "dpo"}
    off |= {s for s in ("rl", "cast") if not getattr(cfg, s).enabled}
    return [s for s in STAGES if s not in off]


def final_role(cfg: RunConfig) -> str:
    """The last model this config trains: the run's final model (steering is not a model of its own)."""
    return [s for s in pipeline(cfg) if s in TRAINED][-1]


def open_model(spec: str, device: str = "auto"):
    """The backend `spec` names; a run directory means its final model, steered as its run evaluated it
    when its cast stage ran (`charter eval`, `compare`, `serve` and `chat` all read runs through this)."""
    from .backends import get_backend
    from .stages.common import final_model

    final = final_model(spec)  # None: not a run directory
    if final is None:
        return get_backend(spec, device=device)
    run = Run.open(spec, device)
    return run.backend("cast") if run.steered() else get_backend(str(final), device=device)


def trained_roles(cfg: RunConfig) -> list[str]:
    """The models this config makes, in order (the steered `cast` last, when on); evaluate reads them all."""
    return [s for s in pipeline(cfg) if s in TRAINED or s == "cast"]
PACKAGES = ["charter", "torch", "transformers", "trl", "peft", "datasets"]


def _versions():
    out = {"python": sys.version.split()[0]}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def reset_peak_rss():
    """Start a new peak-memory window (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    """Peak resident memory since the last reset (VmHWM), else since the process started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Run:
    """One run directory: paths, manifest, record stamping and shared backends."""

    def __init__(self, cfg: RunConfig, out, force: bool = False):
        self.cfg = cfg
        self.dir = Path(out)
        self.force = force
        self.constitution = load_constitution(cfg.constitution)
        self._backends = {}
        self._truncated = 0  # prompts the released backends cut to fit their context, for the manifest
        self._cached = 0  # generate calls the released backends answered from the generation cache
        self.manifest_path = self.dir / MANIFEST
        self.manifest = {}
        if self.manifest_path.exists():
            import json

            try:
                self.manifest = json.loads(self.manifest_path.read_text())
            except (ValueError, OSError) as e:
                raise CharterError(f"{self.manifest_path}: unreadable manifest ({e}); "
                                   "move the run directory aside to start over") from None

    @classmethod
    def open(cls, run_dir, device: str = "auto") -> "Run":
        """A run directory as its manifest's config made it, to read its models and its supervisor."""
        from .schema import from_dict
        from .stages.common import read_manifest

        m = read_manifest(run_dir)
        if m is None:
            raise CharterError(f"{run_dir}: not a run directory (no {MANIFEST})")
        cfg = from_dict(RunConfig, m.get("config") or {})
        if device != "auto":
            cfg.device = device
        recorded = (m.get("constitution") or {}).get("path")
        if (recorded and cfg.constitution not in BUILTIN and not Path(cfg.constitution).exists()
                and Path(recorded).is_file()):
            cfg.constitution = recorded  # a relative path in the config meant the directory the run began in
        return cls(cfg, run_dir)

    def steered(self) -> bool:
        """Whether this run's model is served steered (`stages.common.steered`)."""
        from .stages.common import steered

        return steered(self.manifest)

    # --- paths and records -------------------------------------------------
    def path(self, *parts) -> Path:
        return self.dir.joinpath(*parts)

    def stamp(self, rec: dict, stage: str) -> dict:
        rec.update(stage=stage, constitution=self.constitution.hash, config=self.cfg.hash())
        return rec

    def stage_info(self, stage) -> dict:
        return self.manifest.setdefault("stages", {}).setdefault(stage, {"status": "pending"})

    def save_manifest(self):
        records.write_json(self.manifest_path, self.manifest)

    # --- models ------------------------------------------------------------
    def model_spec(self, role: str) -> str:
        """`base`, `sft`, `dpo` or `rl` to a loadable spec; anything else passes through."""
        if role == "base":
            return self.cfg.model
        if role == "cast":  # the weights of the model the cast stage steered, as its steering.json says
            from .steer import steering_meta

            return str(self.path("models", steering_meta(self)["start"]))
        if role in TRAINED:
            p = self.path("models", role)
            if role not in pipeline(self.cfg):  # what an earlier config left on disk is not this config's model
                raise CharterError(f"the {role} model is not trained by this config ({role}.enabled is false), so "
                                   f"{p} is not used; name a model this config trains")
            if not (p / "config.json").exists():
                raise CharterError(f"{p}: the {role} model has not been trained yet")
            return trained_spec(self.cfg.model, p)
        return role

    def model_spec_resolved(self, role: str) -> str:
        from .models import resolve_model

        return resolve_model(self.model_spec(role))

    def precision(self) -> str:
        """What `precision` resolves to on this machine (`auto` differs between machines), for the manifest."""
        from .backends.hf import pick_device, resolve_dtype

        return str(resolve_dtype(self.cfg.precision, pick_device(self.cfg.device))).removeprefix("torch.")

    def backend(self, role: str):
        spec = self.model_spec(role)
        key = "cast" if role == "cast" else spec  # the steered model shares weights, not answers
        if key not in self._backends:
            from .backends import get_backend

            self.release()  # keep one model in memory at a time
            backend = get_backend(spec, device=self.cfg.device, trust_remote_code=self.cfg.trust_remote_code,
                                  precision=self.cfg.precision)
            if role == "cast":  # not cached: its answers depend on the supervisor as well as the weights
                from .steer import steered

                backend = steered(self, backend)
            elif self.cfg.cache:
                from .backends.cache import cached

                backend = cached(backend, spec)
            if role in TRAINED or role == "cast":  # records name models relative to the run directory
                backend.name = f"models/{role}"
            self._backends[key] = backend
        return self._backends[key]

    @property
    def supervisor(self):
        if getattr(self, "_supervisor", None) is None:
            from .supervise import from_config

            self._supervisor = from_config(self)
        return self._supervisor

    def release(self):
        for b in self._backends.values():
            self._truncated += getattr(b, "truncated", 0)
            self._cached += getattr(b, "hits", 0)  # a CachedBackend's generate calls answered from the cache
            if hasattr(b, "close"):  # engines that hold GPU memory outside Python's reach (vLLM)
                b.close()
        self._backends.clear()

    # --- orchestration -----------------------------------------------------
    def check_compatible(self, restart: str | None):
        old = self.manifest.get("config_hash")
        same = old in (None, self.cfg.hash()) and self.manifest.get("constitution_hash") in (
            None, self.constitution.hash)
        if not same and restart is None:
            raise CharterError(
                f"{self.manifest_path}: this run directory was made with a different config or "
                "constitution; use a new --out, or --restart STAGE to redo that stage and all after it")
        if restart is not None:
            if not self.manifest_path.exists():  # not a run directory: --restart would delete what is there
                raise CharterError(f"--restart: {self.dir} holds no earlier run (no manifest.json); "
                                   "drop --restart to start one there")
            stages = pipeline(self.cfg)
            if restart not in stages:
                raise CharterError(f"--restart: unknown stage {restart!r} (stages: {', '.join(stages)})")
            hit = None if same else (
                (stages[0], "the constitution") if self.manifest.get("constitution_hash") not in (
                    None, self.constitution.hash) else first_changed(self.manifest.get("config") or {}, self.cfg, stages))
            if hit and stages.index(restart) > stages.index(hit[0]):  # else the manifest would misstate what ran
                raise CharterError(f"--restart {restart}: {hit[1]} changed, which the {hit[0]} stage reads; restart "
                                   f"from {hit[0]} or earlier, so that every output matches the recorded config")
            for s in stages[stages.index(restart):]:
                self.reset(s)
            self.manifest.pop("final_model", None)  # set again once the restarted stages have trained it

    def check_inputs(self, stage: str, mod):
        """Name the first missing input of a stage, and the stage that writes it."""
        for rel in getattr(mod, "INPUTS", []):
            if not self.path(rel).exists():
                writer = next(s for s in STAGES if any(rel == o or rel.startswith(o + "/") for o in
                                                       importlib.import_module(f"charter.stages.{s}").OUTPUTS))
                raise CharterError(f"stage {stage}: {self.path(rel)} is missing; the {writer} stage writes it "
                                   f"(run it first: --stages {writer} {stage})")

    def reset(self, stage: str):
        """Forget a stage's outputs so it runs again from scratch, with the checkpoints an interrupted
        training left (`train.work_dir`), which would otherwise be resumed."""
        mod = importlib.import_module(f"charter.stages.{stage}")
        for rel in getattr(mod, "OUTPUTS", []):
            paths = [self.path(rel)]
            if rel.startswith("models/"):
                from .train import work_dir

                paths.append(work_dir(self, rel.split("/", 1)[1]))
            for p in paths:
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        self.manifest.setdefault("stages", {})[stage] = {"status": "pending"}

    def record_setup(self, versions: dict, precision: str):
        """Set the package versions and resolved precision; a run resumed under others keeps the earlier
        ones, with the stages they made, in `earlier_setups`, so no finished stage is credited to a setup
        it did not run on."""
        before = {"versions": self.manifest.get("versions"), "precision": self.manifest.get("precision")}
        done = [s for s, i in (self.manifest.get("stages") or {}).items() if i.get("status") == "done"]
        if before["versions"] and before != {"versions": versions, "precision": precision} and done:
            known = [e["stages"] for e in self.manifest.get("earlier_setups", [])]
            self.manifest.setdefault("earlier_setups", []).append(
                {**before, "stages": [s for s in done if not any(s in k for k in known)]})
            log.warning("resuming under other package versions or precision than the finished stages ran "
                        "under; the manifest keeps theirs in earlier_setups")
        self.manifest.update(versions=versions, precision=precision)

    def execute(self, stages=None, restart=None):
        if self.dir.exists() and not self.dir.is_dir():
            raise CharterError(f"--out {self.dir}: a file, not a directory")
        created = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        if created:  # readable by whoever serves or exports the run; a folder the user made keeps its mode
            os.chmod(self.dir, 0o755)
        self.check_compatible(restart)
        self.record_setup(_versions(), self.precision())
        self.manifest.update(
            charter_run=1, config=self.cfg.model_dump(), config_hash=self.cfg.hash(),
            constitution={"name": self.constitution.name, "version": self.constitution.version,
                          "path": self.constitution.path, "sha256": self.constitution.sha256},
            constitution_hash=self.constitution.hash)
        if self.force:
            self.manifest["forced"] = True
        self.save_manifest()
        tracker = StageLog(self)
        for stage in stages or pipeline(self.cfg):
            info = self.stage_info(stage)
            if info.get("status") == "done":
                log.info("stage %s: done already, skipping", stage)
                continue
            mod = importlib.import_module(f"charter.stages.{stage}")
            self.check_inputs(stage, mod)
            log.info("stage %s: running", stage)
            info.update(status="running", started=time.time())
            self.save_manifest()
            reset_peak_rss()
            t0 = time.time()
            self._truncated = self._cached = 0
            counts = mod.run(self) or {}
            self.release()
            if self._truncated:
                counts["truncated_prompts"] = self._truncated
            if self._cached:
                counts["cached_batches"] = self._cached
            if counts.get("gate_override"):  # a forced gate concerns the whole run, so it heads the manifest
                self.manifest["gate_override"] = counts["gate_override"]
            info.update(status="done", seconds=round(time.time() - t0, 1),
                        peak_rss_mib=round(peak_rss_mib(), 1), **counts)
            self.save_manifest()
            tracker.stage_done(stage, {"seconds": info["seconds"], **counts}, step=STAGES.index(stage))
        final = final_role(self.cfg)
        if (self.path("models", final) / "config.json").exists():
            self.manifest["final_model"] = f"models/{final}"
        else:  # not trained yet under this config (a partial --stages run, or a restart that stopped early)
            self.manifest.pop("final_model", None)
        self.save_manifest()
        tracker.close()
        return self.manifest
