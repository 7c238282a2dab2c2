"""Jinja2 templates for the HTML charter writes (the run report, the `compare` table); package data."""
from __future__ import annotations

from pathlib import Path


def cell(c) -> str:
    """One measure {rate, lo, hi, n}: a proportion with its 95% interval, or a mean score (no interval)."""
    if c is None:
        return ""
    if c["lo"] is None:
        return f"{c['rate']:.3f} n={c['n']}"
    return f"{c['rate']:.1%} [{c['lo']:.0%}, {c['hi']:.0%}] n={c['n']}"


def render(name: str, **context) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(cell=cell, pct=lambda x, digits=1: "n/a" if x is None else f"{x:.{digits}%}")
    return env.get_template(name).render(**context)
