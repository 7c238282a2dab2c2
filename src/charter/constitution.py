"""The constitution: named principles, each with the prompts that apply it.

A principle carries everything the pipeline asks of it: a critique request and
a revision request (CAI paper, section 3.1), a comparison question for pairwise
labels (section 4.1), and example requests it does and does not cover, which
the trained supervisor learns from.
"""
from __future__ import annotations

import hashlib
import random
from importlib import resources
from pathlib import Path
from typing import Literal

from .errors import CharterError
from .schema import NonEmpty, Section, from_dict
from .yamlio import load_yaml


class Examples(Section):
    covers: list[NonEmpty] = []
    """Requests this principle is about (harmful ones for harm principles)."""
    not_covers: list[NonEmpty] = []
    """Requests that look similar but are fine to answer in full."""


class Principle(Section):
    id: NonEmpty
    """Short unique identifier, e.g. `weapons`."""
    text: NonEmpty
    """The principle in plain language."""
    critique: NonEmpty
    """Critique request shown after a response (CAI 'CritiqueRequest')."""
    revision: NonEmpty
    """Revision request shown after the critique (CAI 'RevisionRequest')."""
    comparison: NonEmpty
    """Multiple-choice question for pairwise labels, e.g. 'Which response is less harmful?'"""
    decline: str = ""
    """Optional: a brief, kind decline with a safe alternative, used as the revision when the model's
    own revision does not satisfy the supervisor (small models often cannot revise)."""
    kind: Literal["harm", "helpful"] = "harm"
    """`harm` (prefer refusing/redirecting harmful requests) or `helpful` (prefer answering benign ones)."""
    examples: Examples = Examples()
    """Example requests the principle does and does not cover."""


class Constitution(Section):
    name: NonEmpty
    """Name of this constitution."""
    version: NonEmpty
    """Version string; bump it when principles change."""
    principles: list[Principle]
    """The principles, in order."""
    sources: list[str] = []
    """Documents the principles draw on (e.g. the UN Declaration of Human Rights)."""
    sha256: str = ""
    """Filled in on load: hash of the file's bytes, recorded in every record."""
    path: str = ""
    """Filled in on load: where the constitution was read from."""

    @property
    def hash(self) -> str:
        return self.sha256[:16]

    def get(self, pid: str) -> Principle:
        for p in self.principles:
            if p.id == pid:
                return p
        raise CharterError(f"{self.path}: no principle with id {pid!r}")

    def sample(self, key: str, seed: int = 0, kind: str | None = None) -> Principle:
        """Pick a principle deterministically from (seed, key): resuming reproduces it."""
        pool = [p for p in self.principles if kind is None or p.kind == kind] or self.principles
        rng = random.Random(f"{seed}:{key}")
        return rng.choice(pool)


BUILTIN = ("default", "small")


def builtin_path(name: str) -> Path:
    return Path(str(resources.files("charter") / "data" / "constitutions" / f"{name}.yaml"))


def load_constitution(spec: str) -> Constitution:
    """Load `default`, `small` or a YAML path, validating every field."""
    path = builtin_path(spec) if spec in BUILTIN else Path(spec)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise CharterError(f"{path}:1: a constitution must be a mapping with name, version and principles")
    for key in ("sha256", "path"):
        if key in data:
            raise CharterError(f"{data.loc(key)}: {key!r} is computed by charter and cannot be set")
    c = from_dict(Constitution, data)
    if not c.principles:
        raise CharterError(f"{data.loc('principles')}: a constitution needs at least one principle")
    seen = {}
    for p, raw in zip(c.principles, data["principles"]):
        if p.id in seen:
            raise CharterError(f"{raw.loc('id')}: duplicate principle id {p.id!r} (first at line {seen[p.id]})")
        seen[p.id] = raw.line_of("id")
    c.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    c.path = str(path.resolve())  # absolute: a run's manifest names it wherever the run is read from
    return c
