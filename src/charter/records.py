"""Records are JSON lines in the run directory.

Appends are crash-safe: each batch is written with one `write` on an
O_APPEND descriptor and fsynced, so a kill leaves at worst one torn last line,
which readers drop and the next append overwrites (see `_repair`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .yamlio import read_jsonl


def _repair(path: Path):
    """Cut a torn (newline-less) tail left by a crash mid-write.

    Reads backwards from the end only as far as the last newline, so an append costs the same however
    long the file is (a stage stays linear in its number of records)."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        pos = end
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            cut = f.read(step).rfind(b"\n")
            if cut >= 0:
                f.truncate(pos + cut + 1)
                return
        f.truncate(0)


def append(path, records) -> None:
    path = Path(path)
    if not records:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _repair(path)
    blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, blob)
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    rows = read_jsonl(path, tolerate_torn_tail=True)
    for r in rows:
        r.pop("_line", None)
    return rows


def done_ids(path) -> set:
    return {r["id"] for r in read(path)}


def write_json(path, obj) -> None:
    """Write JSON atomically: temp file, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def pending(path, items, batch_size: int) -> list[list[dict]]:
    """The chunks of `items` whose ids are not yet recorded in `path`, in order."""
    done = done_ids(path)
    todo = [it for it in items if it["id"] not in done]
    bs = max(1, batch_size)
    return [todo[i:i + bs] for i in range(0, len(todo), bs)]


def resumable(path, items, batch_size: int, desc: str, unit: str = "rec"):
    """Yield chunks of `items` whose ids are not yet recorded in `path`, with a progress bar.

    The caller appends each chunk's records before asking for the next, so a
    killed stage resumes at the first chunk it had not written.
    """
    from tqdm import tqdm

    chunks = pending(path, items, batch_size)
    with tqdm(total=len(items), initial=len(items) - sum(map(len, chunks)), desc=desc, unit=unit) as bar:
        for chunk in chunks:
            yield chunk
            bar.update(len(chunk))
