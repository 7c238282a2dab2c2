"""Where a stage's records are computed: in this process, or sharded over Ray workers.

A record-producing stage hands `map_chunks` its pending items and a chunk
function `fn(run, chunk, *args) -> records`. Locally, `fn` runs here. On Ray,
each worker (an actor) holds its own copy of the run (config, constitution,
one backend at a time, the supervisor) and runs `fn` on the chunks it is sent;
only the driver appends to the record files, in chunk order, so the run
directory ends up exactly as a single-process run leaves it (chunk seeds depend
on chunk contents, see `stages.common.chunk_seed`). A worker that dies has its
chunk sent to a fresh worker; a killed driver resumes from the chunks it wrote.

`fn` must be a module-level function, so that Ray ships it by reference.
"""
from __future__ import annotations

import logging
import socket
from collections import deque

from . import records
from .errors import CharterError

log = logging.getLogger("charter")
RETRIES = 3


def map_chunks(run, path, items, batch_size: int, desc: str, fn, *args, unit: str = "rec"):
    """Compute and append the records of every chunk of `items` not yet in `path`."""
    if run.cfg.executor.kind == "ray":
        return ray_executor(run.cfg.executor).map(run, path, items, batch_size, desc, fn, args, unit)
    for chunk in records.resumable(path, items, batch_size, desc, unit):
        records.append(path, fn(run, chunk, *args))


def _reachable(address: str, timeout: float = 5.0):
    """Fail fast, with a clear message, when a Ray head is not listening (ray.init would hang)."""
    if address in ("local", "auto"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise CharterError(f"executor.address: {address!r} is not local, auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise CharterError(f"cannot reach the Ray cluster at {address} ({e}); start it with "
                           "`ray start --head` there, or check executor.address / --ray") from None


class _Worker:
    """One Ray actor: a copy of the run that serves chunk functions."""

    def __init__(self, cfg, run_dir, force, threads):
        import torch

        from .run import Run

        torch.set_num_threads(max(1, int(threads)))
        self.run = Run(cfg, run_dir, force=force)

    def call(self, fn, chunk, args):
        return fn(self.run, chunk, *args)


class RayExecutor:
    def __init__(self, cfg):
        try:
            import ray
        except ImportError:
            raise CharterError("executor.kind=ray needs Ray: pip install 'charter[ray]'") from None
        self.cfg, self.ray = cfg, ray
        if not ray.is_initialized():
            _reachable(cfg.address)
            kw = {"num_cpus": max(cfg.workers * cfg.cpus_per_worker, 1)} if cfg.address == "local" else {
                "address": cfg.address}
            try:
                ray.init(**kw, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
            except (ConnectionError, RuntimeError) as e:
                raise CharterError(f"cannot start or join the Ray cluster at {cfg.address}: {e}") from None
        self.actor_cls = ray.remote(num_cpus=cfg.cpus_per_worker, num_gpus=cfg.gpus_per_worker)(_Worker)

    def _actor(self, run):
        return self.actor_cls.remote(run.cfg, str(run.dir), run.force, self.cfg.cpus_per_worker)

    def map(self, run, path, items, batch_size, desc, fn, args, unit):
        from tqdm import tqdm

        ray = self.ray
        chunks = records.pending(path, items, batch_size)
        if not chunks:
            return
        queue = deque(range(len(chunks)))
        actors = [self._actor(run) for _ in range(min(self.cfg.workers, len(chunks)))]
        inflight, finished, tries = {}, {}, {}
        commit = 0  # chunks are appended in order, whatever order workers finish in

        def submit(actor):
            if queue:
                i = queue.popleft()
                inflight[actor.call.remote(fn, chunks[i], args)] = (i, actor)

        done_before = len(items) - sum(map(len, chunks))
        with tqdm(total=len(items), initial=done_before, desc=f"{desc} (ray x{len(actors)})", unit=unit) as bar:
            for a in actors:
                submit(a)
            try:
                while inflight:
                    ready, _ = ray.wait(list(inflight), num_returns=1)
                    i, actor = inflight.pop(ready[0])
                    try:
                        finished[i] = ray.get(ready[0])
                    except ray.exceptions.RayTaskError as e:
                        # The chunk function raised: a real error, not a lost worker; surface it.
                        cause = e.as_instanceof_cause()
                        raise (cause if isinstance(cause, CharterError) else
                               CharterError(f"{desc}: a Ray worker failed: {str(e).strip().splitlines()[-1]}"))
                    except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                            ray.exceptions.ObjectLostError) as e:
                        tries[i] = tries.get(i, 0) + 1
                        if tries[i] > RETRIES:
                            raise CharterError(f"{desc}: chunk {i} lost its worker {RETRIES + 1} times: {e}")
                        log.warning("%s: a Ray worker died; chunk %d goes to a new worker", desc, i)
                        actor = self._actor(run)
                        actors.append(actor)
                        queue.appendleft(i)
                    submit(actor)
                    while commit in finished:
                        recs = finished.pop(commit)
                        records.append(path, recs)
                        bar.update(len(chunks[commit]))
                        commit += 1
            finally:
                for a in actors:
                    ray.kill(a)


_EXECUTORS = {}


def ray_executor(cfg) -> RayExecutor:
    key = (cfg.address, cfg.workers, cfg.cpus_per_worker, cfg.gpus_per_worker)
    if key not in _EXECUTORS:
        _EXECUTORS[key] = RayExecutor(cfg)
    return _EXECUTORS[key]
