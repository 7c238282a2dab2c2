"""Stage 9: a self-contained `report.html` (inline SVG, no network, no scripts).

Shows the harmlessness/helpfulness plane for base, SFT and DPO (after the CAI
paper's Figure 2), refusal rates by category with 95% intervals, the supervisor
and refusal-judge calibrations, before/after example cards and the constitution.
It renders what the earlier stages measured (templates/report.html.j2) and
computes nothing itself.
"""
from __future__ import annotations

import html
import json
import os

from ..evals.compare import measure_rows
from ..evals.refusal import CLASSES
from ..templates import render
from .common import CALIBRATION, METRICS, REFUSAL_CALIBRATION, REPORT

INPUTS = [METRICS]
OUTPUTS = [REPORT]
COLORS = {"base": "#888888", "sft": "#3b7dd8", "dpo": "#d8573b", "rl": "#2e9e5b"}


def _color(role, i):
    return COLORS.get(role, ["#2a9d8f", "#8e44ad", "#e9c46a"][i % 3])


def pareto_svg(models: dict) -> str:
    """Harmlessness (harmful refused) vs helpfulness (benign answered), one dot per model."""
    w, h, pad = 420, 320, 50
    parts = [f'<svg class="figure" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">',
             f'<rect x="{pad}" y="10" width="{w - pad - 10}" height="{h - pad - 10}" fill="#fafafa" stroke="#ccc"/>']
    for t in (0, 0.25, 0.5, 0.75, 1):
        x = pad + t * (w - pad - 10)
        y = h - pad - t * (h - pad - 10)
        parts.append(f'<text x="{x}" y="{h - pad + 16}" font-size="11" text-anchor="middle">{t:.0%}</text>')
        parts.append(f'<text x="{pad - 6}" y="{y + 4}" font-size="11" text-anchor="end">{t:.0%}</text>')
    parts.append(f'<text x="{pad + (w - pad) / 2}" y="{h - 12}" font-size="12" text-anchor="middle">'
                 'helpfulness: benign requests answered</text>')
    parts.append(f'<text x="14" y="{(h - pad) / 2}" font-size="12" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(h - pad) / 2})">harmlessness: harmful refused</text>')
    pts = []
    for i, (role, m) in enumerate(models.items()):
        if m["refusal_rate"].get("harmful") is None or m["refusal_rate"].get("benign") is None:
            continue
        hx, hy = 1 - m["refusal_rate"]["benign"], m["refusal_rate"]["harmful"]
        x, y = pad + hx * (w - pad - 10), h - pad - hy * (h - pad - 10)
        pts.append((x, y))
        # Labels step down per model so coinciding points stay readable.
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{_color(role, i)}" fill-opacity="0.8"/>'
                     f'<text x="{min(x + 9, w - 40):.1f}" y="{max(y - 6 + 14 * i, 22):.1f}" font-size="12" '
                     f'fill="{_color(role, i)}">{html.escape(role)}</text>')
    if len(pts) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        parts.insert(2, f'<polyline points="{path}" fill="none" stroke="#bbb" stroke-dasharray="4 3"/>')
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
    page = render("report.html.j2", run=run, metrics=metrics, models=models, classes=CLASSES,
                  suite_rows=[(f"{s}: {k}", cs) for s, k, cs in measure_rows(suites, list(models))],
                  pareto=pareto_svg(models), bars=bars_svg(models),
                  cal=_json(run.path(CALIBRATION)), refusal=_json(run.path(REFUSAL_CALIBRATION)))
    path = run.path(REPORT)
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text(page)
    os.replace(tmp, path)
    return {"bytes": path.stat().st_size}
