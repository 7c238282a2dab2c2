"""Spec strings `KIND[:REST]` name a provider of one kind (a backend, a supervisor, a refusal judge, a
suite). A registry maps each KIND to a `module:attr` target and imports it only when a spec names it, so
`import charter` never imports an engine a run does not use.
"""
from __future__ import annotations

import importlib

from .errors import CharterError


class Registry:
    def __init__(self, what: str, targets: dict[str, str], usage: str = ""):
        self.what, self.targets = what, targets
        self.usage = usage or ", ".join(targets)

    def kind(self, spec: str) -> str:
        """The KIND a spec starts with; a `?query` right after it belongs to the provider (`fake?delay=1`)."""
        return spec.partition(":")[0].partition("?")[0]

    def resolve(self, spec: str, fallback: str | None = None):
        """(target, rest) for `spec`. A spec of no registered kind goes whole to `fallback`, or is an error
        that lists the known kinds."""
        kind, rest = self.kind(spec), spec.partition(":")[2]
        if kind not in self.targets:
            if fallback is None:
                raise CharterError(f"unknown {self.what} {spec!r} (use {self.usage})")
            kind, rest = fallback, spec
        module, _, attr = self.targets[kind].partition(":")
        return getattr(importlib.import_module(module), attr), rest
