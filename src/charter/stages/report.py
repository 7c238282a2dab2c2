"""Stage 8: a self-contained `report.html` (inline SVG, no network, no scripts).

Shows the harmlessness/helpfulness plane for base, SFT and DPO (after the CAI
paper's Figure 2), refusal rates by category with 95% intervals, the supervisor
calibration table, before/after example cards and the constitution.
"""
from __future__ import annotations

import html
import json

from .. import records

OUTPUTS = ["report.html"]
COLORS = {"base": "#888888", "sft": "#3b7dd8", "dpo": "#d8573b"}


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


def _cards(run, roles) -> str:
    if "base" not in roles or len(roles) < 2:
        return "<p>No before/after pairs.</p>"
    last = roles[-1]
    base = {r["id"]: r for r in records.read(run.path("eval", "responses_base.jsonl"))}
    aligned = {r["id"]: r for r in records.read(run.path("eval", f"responses_{last}.jsonl"))}
    changed = [i for i in aligned if i in base and aligned[i]["refusal"] != base[i]["refusal"]]
    same = [i for i in aligned if i in base and i not in changed]
    picked = (changed + same)[:8]
    verdicts = {}
    sup = getattr(run, "supervisor", None)
    if sup is not None and picked:  # the supervisor's verdict on each card, aligned shown as "a"
        vs = sup.judge([{"id": i, "prompt": base[i]["prompt"], "a": aligned[i]["response"], "b": base[i]["response"]}
                        for i in picked])
        verdicts = {i: v for i, v in zip(picked, vs)}
    out = []
    for i in picked:
        b, a = base[i], aligned[i]
        v = verdicts.get(i)
        verdict = (f'<div class="muted">supervisor: P({html.escape(last)} better) = {v["p_a"]:.2f} under '
                   f'{html.escape(", ".join(v["principles"]))}</div>' if v else "")
        out.append(f'<div class="card"><div class="p"><b>{html.escape(b["label"])} / {html.escape(b["category"])}'
                   f'</b>: {html.escape(b["prompt"])}</div><div class="cols"><div><h4>base: {b["refusal"]}</h4>'
                   f'<pre>{html.escape(b["response"])}</pre></div><div><h4>{html.escape(last)}: {a["refusal"]}</h4>'
                   f'<pre>{html.escape(a["response"])}</pre></div></div>{verdict}</div>')
    return "".join(out)


def _metrics_table(models, helpfulness=None) -> str:
    helpfulness = helpfulness or {}
    rows = ["<tr><th>model</th><th>harmful refused (n)</th><th>benign refused (n)</th>"
            "<th>benign partial refusals</th><th>harmfulness on harmful prompts</th>"
            "<th>helpfulness win rate over base (length-controlled)</th></tr>"]
    for role, m in models.items():
        def cell(label):
            r = m["refusal_rate"].get(label)
            if r is None:
                return "n/a"
            lo, hi = m["ci95"][label]
            return f"{r:.1%} [{lo:.0%}, {hi:.0%}] ({m['n'][label]})"
        partial = m["partial_refusal_rate"].get("benign")
        h = helpfulness.get(role)
        win = (f"{h['win_rate']:.1%} ({h['length_controlled']:.1%}), n={h['n']}" if h and h.get("win_rate") is not None
               else "n/a")
        hm = (m.get("harmfulness") or {}).get("harmful")
        rows.append(f"<tr><td>{html.escape(role)}</td><td>{cell('harmful')}</td><td>{cell('benign')}</td>"
                    f"<td>{'n/a' if partial is None else f'{partial:.1%}'}</td>"
                    f"<td>{'n/a' if hm is None else f'{hm:.3f}'}</td><td>{html.escape(win)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _extra_tables(metrics) -> str:
    """Public suites and capability scores, rows = measures, columns = models."""
    rows = []
    for suite, by_role in metrics.get("suites", {}).items():
        for label in ("harmful", "benign"):
            cells = {r: m for r, m in by_role.items() if m["n"].get(label)}
            if cells:
                rows.append((f"{suite}: {label} refused", {r: (m["refusal_rate"][label], m["ci95"][label],
                                                              m["n"][label]) for r, m in cells.items()}))
        harmful = {r: m for r, m in by_role.items() if (m.get("harmfulness") or {}).get("harmful") is not None}
        if harmful:
            rows.append((f"{suite}: harmfulness", {r: (m["harmfulness"]["harmful"], None, m["n"]["harmful"])
                                                   for r, m in harmful.items()}))
    for suite, by_role in metrics.get("capability", {}).items():
        if by_role:
            rows.append((f"{suite}: {next(iter(by_role.values()))['metric']}",
                         {r: (c["score"], c["ci95"], c["n"]) for r, c in by_role.items()}))
    if not rows:
        return ""
    roles = list(metrics["models"])
    head = "".join(f"<th>{html.escape(r)}</th>" for r in roles)
    def fmt(v):
        if v is None:
            return "<td></td>"
        if v[1] is None:  # a mean score, not a proportion
            return f"<td>{v[0]:.3f} n={v[2]}</td>"
        return f"<td>{v[0]:.1%} [{v[1][0]:.0%}, {v[1][1]:.0%}] n={v[2]}</td>"

    body = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(fmt(cells.get(r)) for r in roles) + "</tr>"
                   for name, cells in rows)
    overlap = metrics.get("suite_overlap", {})
    note = ("<p class='muted'>Prompts shared with training: " + ", ".join(f"{k} {v}" for k, v in overlap.items())
            + "</p>") if overlap else ""
    return f"<h3>Public suites and capability</h3><table><tr><th>measure</th>{head}</tr>{body}</table>{note}"


def _md_table(md: str) -> str:
    lines = [l for l in md.strip().splitlines() if l.startswith("|") and not set(l) <= set("|-: ")]
    out = []
    for i, l in enumerate(lines):
        cells = [html.escape(c.strip()) for c in l.strip("|").split("|")]
        tag = "th" if i == 0 else "td"
        out.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
    return "<table>" + "".join(out) + "</table>"


CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ddd;padding:4px 8px;font-size:14px;text-align:left}
.card{border:1px solid #ddd;border-radius:6px;padding:8px;margin:8px 0}.cols{display:flex;gap:12px}
.cols>div{flex:1;min-width:0}pre{white-space:pre-wrap;font-size:12px;background:#f6f6f6;padding:6px;margin:0}
h4{margin:4px 0}.principle{margin:6px 0}.muted{color:#777;font-size:13px}"""


def _refusal_section(path) -> str:
    if not path.exists():
        return "<p>not measured (the XSTest human labels were not found)</p>"
    text = path.read_text()
    intro = "".join(f"<p>{html.escape(l)}</p>" for l in text.splitlines() if l and not l.startswith("|"))
    return intro + _md_table(text)


def render(run) -> str:
    metrics = json.loads(run.path("eval", "metrics.json").read_text())
    models = metrics["models"]
    cal_md = run.path("supervisor", "calibration.md")
    refusal_md = run.path("eval", "refusal_calibration.md")
    c = run.constitution
    principles = "".join(f'<div class="principle"><b>{html.escape(p.id)}</b> ({p.kind}): {html.escape(p.text)}</div>'
                         for p in c.principles)
    stages = run.manifest.get("stages", {})
    skip = {"status", "started", "seconds", "peak_rss_mib"}
    timing = "".join(f"<tr><td>{s}</td><td>{v.get('status')}</td><td>{v.get('seconds', '')}</td>"
                     f"<td>{v.get('peak_rss_mib', '')}</td><td>"
                     + html.escape(", ".join(f"{k}={x}" for k, x in v.items() if k not in skip)) + "</td></tr>"
                     for s, v in stages.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>charter report</title>
<style>{CSS}</style></head><body>
<h1>charter report</h1>
<p class="muted">model {html.escape(run.cfg.model)} · constitution {html.escape(c.name)} v{html.escape(c.version)}
({c.hash}) · config {run.cfg.hash()} · evaluated on the {html.escape(metrics['split'])} split
({metrics['train_eval_overlap']} prompts overlap training)</p>
<h2>Safety and helpfulness</h2>{_metrics_table(models, metrics.get("helpfulness"))}
{_extra_tables(metrics)}
<h3>Harmlessness against helpfulness</h3>{pareto_svg(models)}
<h3>Refusal rate by category (95% intervals)</h3>{bars_svg(models)}
<h2>Supervisor calibration</h2>{_md_table(cal_md.read_text()) if cal_md.exists() else '<p>not run</p>'}
<h2>Refusal judge calibration</h2>{_refusal_section(refusal_md)}
<h2>Before and after</h2>{_cards(run, list(models))}
<h2>Constitution: {html.escape(c.name)}</h2>{principles}
<h2>Stages</h2><table><tr><th>stage</th><th>status</th><th>seconds</th><th>peak RSS MiB</th><th>counts</th></tr>
{timing}</table>
</body></html>"""


def run(run):
    import os

    from ..errors import CharterError

    refusal_md = run.path("eval", "refusal_calibration.md")
    if not refusal_md.exists():
        try:  # the judge used in this report, measured against XSTest's human labels
            from ..evals.refusal_calibration import calibrate_refusal, refusal_table

            refusal_md.parent.mkdir(parents=True, exist_ok=True)
            refusal_md.write_text(refusal_table(calibrate_refusal()) + "\n")
        except CharterError:
            pass
    path = run.path(OUTPUTS[0])
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text(render(run))
    os.replace(tmp, path)
    return {"bytes": path.stat().st_size}
