"""Stage 10: a self-contained `report.html` (inline SVG, no network, no scripts).

Shows the harmlessness/helpfulness plane for every evaluated model (after the CAI
paper's Figure 2), on the dev split and XSTest, with the target corner and the
measured frontier of methods (benchmarks/frontier.json), refusal rates by category with 95% intervals, the supervisor
and refusal-judge calibrations, before/after example cards and the constitution.
It renders what the earlier stages measured (templates/report.html.j2) and
computes nothing itself.
"""
from __future__ import annotations

import html
import json
import os
from pathlib import Path

from ..evals.compare import measure_rows
from ..evals.refusal import CLASSES
from ..templates import render
from .common import CALIBRATION, METRICS, REFUSAL_CALIBRATION, REPORT

INPUTS = [METRICS]
OUTPUTS = [REPORT]
COLORS = {"base": "#888888", "sft": "#3b7dd8", "dpo": "#d8573b", "rl": "#2e9e5b"}


def _color(role, i):
    return COLORS.get(role, ["#2a9d8f", "#8e44ad", "#e9c46a"][i % 3])


# The benchmark's measured frontier (benchmarks/frontier.py) sits beside the package in a source checkout.
FRONTIER = Path(__file__).resolve().parents[3] / "benchmarks" / "frontier.json"
TARGET = (0.8, 0.10)  # harmful refused at least, benign refused at most: the goal the frontier is measured against


def pareto_svg(models: dict, xstest: dict | None = None, frontier: dict | None = None) -> str:
    """Harmlessness (harmful refused) against helpfulness (benign answered): one filled dot per model on the
    dev split, an open one on XSTest (full refusals, as its paper counts them), the target corner shaded, and,
    when given, the measured frontier of methods from one SFT model (small grey diamonds)."""
    w, h, pad = 440, 330, 50
    X = lambda v: pad + v * (w - pad - 10)  # noqa: E731  (helpfulness: benign answered)
    Y = lambda v: h - pad - v * (h - pad - 10)  # noqa: E731
    parts = [f'<svg class="figure" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">',
             f'<rect x="{pad}" y="10" width="{w - pad - 10}" height="{h - pad - 10}" fill="#fafafa" stroke="#ccc"/>',
             f'<rect x="{X(1 - TARGET[1]):.1f}" y="{Y(1):.1f}" width="{X(1) - X(1 - TARGET[1]):.1f}" '
             f'height="{Y(TARGET[0]) - Y(1):.1f}" fill="#2e9e5b" fill-opacity="0.15"><title>target: harmful refused '
             f'&#8805; {TARGET[0]:.0%}, benign refused &#8804; {TARGET[1]:.0%}</title></rect>']
    for t in (0, 0.25, 0.5, 0.75, 1):
        parts.append(f'<text x="{X(t)}" y="{h - pad + 16}" font-size="11" text-anchor="middle">{t:.0%}</text>')
        parts.append(f'<text x="{pad - 6}" y="{Y(t) + 4}" font-size="11" text-anchor="end">{t:.0%}</text>')
    parts.append(f'<text x="{pad + (w - pad) / 2}" y="{h - 12}" font-size="12" text-anchor="middle">'
                 'helpfulness: benign requests answered</text>')
    parts.append(f'<text x="14" y="{(h - pad) / 2}" font-size="12" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(h - pad) / 2})">harmlessness: harmful refused</text>')
    for name, p in ((frontier or {}).get("points") or {}).items():
        dev = (p or {}).get("dev") or {}
        if dev.get("benign_refused") is None or dev.get("harmful_refused") is None:
            continue
        x, y = X(1 - dev["benign_refused"]), Y(dev["harmful_refused"])
        right = x < w - 70  # a label near the right edge goes to the diamond's left
        parts.append(f'<path d="M{x:.1f},{y - 4:.1f}l4,4l-4,4l-4,-4z" fill="#bbb"><title>frontier, '
                     f'{html.escape(name)} (dev split)</title></path><text x="{x + (6 if right else -6):.1f}" '
                     f'y="{y + 12:.1f}" font-size="9" fill="#999" text-anchor="{"start" if right else "end"}">'
                     f'{html.escape(name)}</text>')
    pts = []
    for i, (role, m) in enumerate(models.items()):
        if m["refusal_rate"].get("harmful") is None or m["refusal_rate"].get("benign") is None:
            continue
        x, y = X(1 - m["refusal_rate"]["benign"]), Y(m["refusal_rate"]["harmful"])
        pts.append((x, y))
        # Labels step down per model so coinciding points stay readable.
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{_color(role, i)}" fill-opacity="0.8"/>'
                     f'<text x="{min(x + 9, w - 40):.1f}" y="{max(y - 6 + 14 * i, 22):.1f}" font-size="12" '
                     f'fill="{_color(role, i)}">{html.escape(role)}</text>')
        xs = ((xstest or {}).get(role) or {}).get("full_refusal_rate", {})
        if xs.get("harmful") is not None and xs.get("benign") is not None:
            parts.append(f'<circle cx="{X(1 - xs["benign"]):.1f}" cy="{Y(xs["harmful"]):.1f}" r="6" fill="none" '
                         'stroke-width="2" '
                         f'stroke="{_color(role, i)}"><title>{html.escape(role)} on XSTest</title></circle>')
    if len(pts) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        parts.insert(3, f'<polyline points="{path}" fill="none" stroke="#bbb" stroke-dasharray="4 3"/>')
    parts.append("</svg>")
    return "".join(parts)


def bars_svg(models: dict) -> str:
    """Refusal rate per category and model, with 95% Wilson intervals."""
    cats = sorted({c for m in models.values() for c in m["by_category"]})
    roles = list(models)
    bar_h, gap = 9, 8
    row_h = bar_h * len(roles) + gap
    left, width = 210, 300
    h = 30 + row_h * len(cats)
    parts = [f'<svg class="figure" xmlns="http://www.w3.org/2000/svg" width="{left + width + 60}" height="{h}">']
    for i, role in enumerate(roles):
        parts.append(f'<rect x="{left + i * 70}" y="4" width="10" height="10" fill="{_color(role, i)}"/>'
                     f'<text x="{left + i * 70 + 14}" y="13" font-size="11">{html.escape(role)}</text>')
    for ci, cat in enumerate(cats):
        y0 = 24 + ci * row_h
        parts.append(f'<text x="{left - 6}" y="{y0 + row_h / 2}" font-size="11" text-anchor="end">'
                     f'{html.escape(cat)}</text>')
        for i, role in enumerate(roles):
            c = models[role]["by_category"].get(cat)
            if not c:
                continue
            y = y0 + i * bar_h
            parts.append(f'<rect x="{left}" y="{y}" width="{c["refusal_rate"] * width:.1f}" height="{bar_h - 1}" '
                         f'fill="{_color(role, i)}"><title>{html.escape(role)} {html.escape(cat)}: '
                         f'{c["refusal_rate"]:.0%} of {c["n"]}</title></rect>')
            lo, hi = c["ci95"]
            parts.append(f'<line x1="{left + lo * width:.1f}" x2="{left + hi * width:.1f}" y1="{y + bar_h / 2}" '
                         f'y2="{y + bar_h / 2}" stroke="#222" stroke-width="1"/>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="20" y2="{h}" stroke="#999"/></svg>')
    return "".join(parts)


def _json(path):
    return json.loads(path.read_text()) if path.exists() else None


def run(run):
    metrics = json.loads(run.path(METRICS).read_text())
    models = metrics["models"]
    suites = {**metrics.get("suites", {}), **metrics.get("capability", {})}
    # The frontier was measured on the embedded model and default config: beside another model it would mislead.
    frontier = _json(FRONTIER) if run.cfg.model == "default" else None
    page = render("report.html.j2", run=run, metrics=metrics, models=models, classes=CLASSES,
                  suite_rows=[(f"{s}: {k}", cs) for s, k, cs in measure_rows(suites, list(models))],
                  pareto=pareto_svg(models, metrics.get("suites", {}).get("xstest"), frontier),
                  frontier=frontier, bars=bars_svg(models),
                  cal=_json(run.path(CALIBRATION)), refusal=_json(run.path(REFUSAL_CALIBRATION)))
    path = run.path(REPORT)
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text(page)
    os.replace(tmp, path)
    return {"bytes": path.stat().st_size}
