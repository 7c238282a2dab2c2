"""`charter family`: one constitution, several base models, one comparison table.

Runs the pipeline once per base model (each in its own run directory, each
resumable), then `compare`s the base and aligned models on the same suites.
"""
from __future__ import annotations

from pathlib import Path

from .errors import CharterError
from .schema import Section, from_dict
from .yamlio import load_yaml


class Member(Section):
    name: str
    """Column name in the table, e.g. `small`."""
    model: str
    """Base model spec for this tier (`default`, hub id, folder, .gguf)."""
    overrides: list[str] = []
    """Extra `key=value` overrides for this tier only (e.g. a smaller batch for a larger model)."""


class FamilyConfig(Section):
    run: str
    """Run config applied to every tier (path, relative to this file)."""
    members: list[Member]
    """The tiers, smallest first."""
    suites: list[str] = ["dev"]
    """Suites for the comparison table (see `charter compare`)."""
    limit: int | None = None
    """At most this many prompts per suite in the table."""
    overrides: list[str] = []
    """`key=value` overrides applied to every tier."""
    include_base: bool = True
    """Also put each tier's base model in the table, next to its aligned model."""


def load_family(path) -> FamilyConfig:
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise CharterError(f"{path}:1: a family config must be a mapping")
    fam = from_dict(FamilyConfig, data)
    names = [m.name for m in fam.members]
    if not names or len(set(names)) != len(names):
        raise CharterError(f"{data.loc('members')}: a family needs at least one member, each with its own name")
    fam.run = str((Path(path).parent / fam.run).resolve()) if not Path(fam.run).is_absolute() else fam.run
    return fam


def run_family(path, out, force=False) -> dict:
    from .config import load_config
    from .evals.compare import compare
    from .run import Run

    fam = load_family(path)
    out = Path(out)
    columns = []
    for m in fam.members:
        cfg = load_config(fam.run, [f"model={m.model}", *fam.overrides, *m.overrides])
        run_dir = out / m.name
        Run(cfg, run_dir, force=force).execute()
        if fam.include_base and m.model not in columns:  # tiers that share a base show it once
            columns.append(m.model)
        columns.append(str(run_dir))
    return compare(columns, fam.suites, out / "compare", fam.limit)
