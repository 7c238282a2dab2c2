"""The constitution: named principles, each with the prompts that apply it.

A principle carries everything the pipeline asks of it: a critique request and
a revision request (CAI paper, section 3.1), a comparison question for pairwise
labels (section 4.1), and example requests it does and does not cover, which
the trained supervisor learns from.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import CharterError
from .schema import from_dict
from .yamlio import load_yaml


def _nonempty(obj, data, names):
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, str) and not value.strip():
            raise CharterError(f"{data.loc(name) if hasattr(data, 'loc') else name}: {name!r} must not be empty")


@dataclass
class Examples:
    covers: list[str] = field(default_factory=list)
    """Requests this principle is about (harmful ones for harm principles)."""
    not_covers: list[str] = field(default_factory=list)
    """Requests that look similar but are fine to answer in full."""

    def validate(self, data):
        for name in ("covers", "not_covers"):
            for i, text in enumerate(getattr(self, name)):
                if not text.strip():
                    raise CharterError(f"{data.loc(name)}: {name}[{i}] must not be empty")


@dataclass
class Principle:
    id: str
    """Short unique identifier, e.g. `weapons`."""
    text: str
    """The principle in plain language."""
    critique: str
    """Critique request shown after a response (CAI 'CritiqueRequest')."""
    revision: str
    """Revision request shown after the critique (CAI 'RevisionRequest')."""
    comparison: str
    """Multiple-choice question for pairwise labels, e.g. 'Which response is less harmful?'"""
    decline: str = ""
    """Optional: a brief, kind decline with a safe alternative, used as the revision when the model's
    own revision does not satisfy the supervisor (small models often cannot revise)."""
    kind: str = "harm"
    """`harm` (prefer refusing/redirecting harmful requests) or `helpful` (prefer answering benign ones)."""
    examples: Examples = field(default_factory=Examples)
    """Example requests the principle does and does not cover."""

    def validate(self, data):
        _nonempty(self, data, ("id", "text", "critique", "revision", "comparison"))
        if self.kind not in ("harm", "helpful"):
            raise CharterError(f"{data.loc('kind')}: kind must be 'harm' or 'helpful', got {self.kind!r}")


@dataclass
class Constitution:
    name: str
    """Name of this constitution."""
    version: str
    """Version string; bump it when principles change."""
    principles: list[Principle]
    """The principles, in order."""
    sources: list[str] = field(default_factory=list)
    """Documents the principles draw on (e.g. the UN Declaration of Human Rights)."""
    sha256: str = ""
    """Filled in on load: hash of the file's bytes, recorded in every record."""
    path: str = ""
    """Filled in on load: where the constitution was read from."""

    def validate(self, data):
        _nonempty(self, data, ("name", "version"))
        if not self.principles:
            raise CharterError(f"{data.loc('principles')}: a constitution needs at least one principle")
        seen = {}
        for i, (p, raw) in enumerate(zip(self.principles, data["principles"])):
            if p.id in seen:
                raise CharterError(f"{raw.loc('id')}: duplicate principle id {p.id!r} "
                                   f"(first at line {seen[p.id]})")
            seen[p.id] = raw.line_of("id")

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
    if not isinstance(data.get("principles"), list):
        raise CharterError(f"{data.loc('principles') if 'principles' in data else path}: "
                           "'principles' must be a list of principles")
    for i, raw in enumerate(data["principles"]):
        if not isinstance(raw, dict):
            raise CharterError(f"{path}: principles[{i}] must be a mapping")
    c = from_dict(Constitution, data)
    c.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    c.path = str(path)
    return c
