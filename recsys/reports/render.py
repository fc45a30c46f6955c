"""Write a report: ``report.html`` (self-contained), ``report.md``, ``metrics.json``, ``plots/``.

``report.html`` has inline CSS and every figure inlined as a base64 ``data:`` PNG: it opens
offline and references no external resource. ``report.md`` shows the same tables and links the
PNGs under ``plots/``. ``metrics.json`` is the dict :func:`recsys.reports.build_report` returns
(keys documented in :mod:`recsys.reports`).

Writing is atomic: everything is built in a temporary directory beside ``out_dir`` and renamed
into place (the whole directory when ``out_dir`` does not exist yet; otherwise ``plots/`` is
swapped and each file replaced with ``os.replace``, ``report.html`` last).

Sections (``<h2 id=...>``), always present, with a line saying why when one has no content:
``summary``, ``calibration``, ``curves``, ``segments``, ``comparison``, ``history_cap``, ``attention``,
``method``.
"""

from __future__ import annotations

import base64
import html
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

SECTIONS = {
    "summary": "Summary",
    "calibration": "Calibration",
    "curves": "ROC and precision-recall curves",
    "segments": "AUC by segment",
    "comparison": "Model comparison",
    "history_cap": "AUC by history cap (simulated short histories)",
    "attention": "Attention maps",
    "method": "Method and notes",
}

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;
color:#1d2330;background:#fff;line-height:1.45;padding:0 16px}
h1{font-size:26px;margin-bottom:4px}h2{font-size:20px;border-bottom:2px solid #dfe3ea;padding-bottom:4px;margin-top:34px}
h3{font-size:16px;margin-bottom:6px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13.5px}
th,td{border:1px solid #d5dae3;padding:4px 9px;text-align:right}th{background:#f1f4f8}
td.l,th.l{text-align:left}.muted{color:#667085;font-size:13px}.ci{color:#667085;font-size:12px}
figure{display:inline-block;margin:6px 10px 12px 0;vertical-align:top}
figcaption{font-size:12.5px;color:#475467;max-width:560px}img{max-width:100%;border:1px solid #eef0f4}
nav a{margin-right:12px;color:#2954a3;text-decoration:none}code{background:#f3f4f6;padding:1px 4px;border-radius:3px}
.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
"""

_METRIC_ROWS = [("auc", "AUC", 4), ("gauc", "GAUC", 4), ("logloss", "Logloss", 4), ("ece", "ECE", 4),
                ("calibration_ratio", "Pred / obs ratio", 3), ("average_precision", "Average precision", 4),
                ("mean_prediction", "Mean prediction", 4), ("positive_rate", "Positive rate", 4)]


def _f(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _with_ci(m: dict, digits: int) -> tuple[str, str]:
    ci = m.get("ci95")
    ci_s = "" if not ci or ci[0] is None else f"[{_f(ci[0], digits)}, {_f(ci[1], digits)}]"
    return _f(m.get("value"), digits), ci_s


def _p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "< 1e-4" if p < 1e-4 else f"{p:.4f}"


# ----------------------------------------------------------------------------------- tables
def _summary_rows(report: dict) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """Header + rows of (value, ci) cells: one row per metric, one column per model."""
    header = [f"{m['name']} {m['model_class']}" for m in report["models"]]
    rows = []
    for key, title, digits in _METRIC_ROWS:
        rows.append([(title, "")] + [_with_ci(m["metrics"][key], digits) for m in report["models"]])
    return header, rows


def _segment_table(block: dict) -> tuple[list[str], list[list[str]]]:
    names = [x["model"] for x in block["buckets"][0]["metrics"]] if block["buckets"] else []
    header = ["segment", "rows", "positive rate"] + [f"AUC {n}" for n in names] + [f"pred/obs {n}" for n in names]
    rows = []
    for b in block["buckets"]:
        rows.append([b["segment"], str(b["rows"]), _f(b["positive_rate"], 3)]
                    + [_f(x["auc"]) for x in b["metrics"]] + [_f(x["calibration_ratio"], 3) for x in b["metrics"]])
    return header, rows


def _comparison_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    header = ["comparison", "AUC a", "AUC b", "delta (b - a)", "DeLong 95% CI", "z", "p-value",
              "paired bootstrap 95% CI"]
    rows = []
    for c in report["comparisons"]:
        d, pb = c["delong"], c["paired_bootstrap"]
        rows.append([f"{c['b']} vs {c['a']}", _f(c["auc_a"]), _f(c["auc_b"]), f"{c['delta']:+.4f}",
                     f"[{_f(d['ci95'][0])}, {_f(d['ci95'][1])}]", _f(d["z"], 2), _p(d["p_value"]),
                     f"[{_f(pb['ci95'][0])}, {_f(pb['ci95'][1])}]"])
    return header, rows


def _history_cap_rows(block: dict) -> tuple[list[str], list[list[Any]]]:
    """One row per cap K; per model the AUC with its 95% interval and the logloss."""
    header = ["K"] + [f"AUC {m['name']} {m['model_class']}" for m in block["models"]] \
        + [f"logloss {m['name']}" for m in block["models"]]
    rows = []
    for i, k in enumerate(block["caps"]):
        rows.append([str(k)] + [_with_ci(m["by_cap"][i]["auc"], 4) for m in block["models"]]
                    + [_f(m["by_cap"][i]["logloss"]["value"]) for m in block["models"]])
    return header, rows


def _history_cap_comparisons(block: dict) -> tuple[list[str], list[list[str]]]:
    header = ["K", "comparison", "AUC a", "AUC b", "delta (b - a)", "DeLong 95% CI", "p-value",
              "paired bootstrap 95% CI"]
    rows = []
    for c in block["comparisons"]:
        d, pb = c["delong"], c["paired_bootstrap"]
        rows.append([str(c["cap"]), f"{c['b']} vs {c['a']}", _f(c["auc_a"]), _f(c["auc_b"]),
                     "n/a" if c["delta"] is None else f"{c['delta']:+.4f}",
                     f"[{_f(d['ci95'][0])}, {_f(d['ci95'][1])}]", _p(d["p_value"]),
                     f"[{_f(pb['ci95'][0])}, {_f(pb['ci95'][1])}]"])
    return header, rows


_NO_CAP = "Not requested: <code>recsys report --history-cap 0,1,3,5,10</code> adds it."


def _models_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    header = ["model", "class", "checkpoint", "rows", "GAUC users used / skipped (single class)"]
    rows = []
    for m in report["models"]:
        g = m["gauc_detail"]
        gs = "n/a (no user key)" if g is None else (f"{g['users_used']} / {g['users_skipped']} "
                                                    f"({g['rows_skipped']} rows skipped)")
        rows.append([m["name"], m["model_class"], m["checkpoint"], str(m["rows"]), gs])
    return header, rows


def _attention_intro(report: dict) -> str:
    if any(m["attention"] for m in report["models"]):
        return "Mean attention weight over the evaluated rows (row: query field, column: attended field)."
    return ("No model in this report exposes attention weights (only models with an "
            "<code>attention_weights()</code> method, such as AutoInt, have this section filled).")


# ------------------------------------------------------------------------------------- HTML
def _html_table(header: list[str], rows: list[list[Any]], left: int = 1) -> str:
    out = ["<table><thead><tr>"]
    out += [f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(header)]
    out.append("</tr></thead><tbody>")
    for r in rows:
        out.append("<tr>")
        for i, cell in enumerate(r):
            cls = ' class="l"' if i < left else ""
            if isinstance(cell, tuple):
                v, ci = cell
                body = html.escape(v) + (f'<br><span class="ci">{html.escape(ci)}</span>' if ci else "")
            else:
                body = html.escape(str(cell))
            out.append(f"<td{cls}>{body}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _img(key: str, figures: dict[str, tuple[str, bytes]]) -> str:
    if key not in figures:
        return ""
    caption, png = figures[key]
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def render_html(report: dict, figures: dict[str, tuple[str, bytes]]) -> str:
    """The self-contained HTML page."""
    e = html.escape
    data = report["data"]
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>recsys offline report</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>recsys offline report</h1>",
             f'<p class="muted">{e(str(len(report["models"])))} model(s) on <code>{e(data["source"])}</code>: '
             f'{data["rows"]} rows, {data["positives"]} positives (rate {_f(data["positive_rate"])}) &middot; '
             f'created {e(report["created"])}</p>',
             "<nav>" + "".join(f'<a href="#{k}">{e(v)}</a>' for k, v in SECTIONS.items()) + "</nav>"]

    parts.append(f'<h2 id="summary">{SECTIONS["summary"]}</h2>')
    header, rows = _summary_rows(report)
    parts.append(_html_table(["metric"] + header, rows))
    parts.append('<p class="muted">Brackets: 95% bootstrap interval. GAUC skips users whose rows are all one class '
                 "(see Method).</p>")
    parts.append(_html_table(*_models_rows(report), left=3))
    if report["other_sections"]:
        for s in report["other_sections"]:
            parts.append(f"<h3>{e(s['model'])}: {e(s.get('title', ''))}</h3>")
            parts.append(_html_table(s.get("columns", []), s.get("rows", [])))

    parts.append(f'<h2 id="calibration">{SECTIONS["calibration"]}</h2>')
    parts.append(f'<p>ECE: {e(report["conventions"]["ece"])}. Pred / obs ratio: '
                 f'{e(report["conventions"]["calibration_ratio"])}.</p>')
    parts.append(_img("reliability", figures) + _img("histograms", figures))

    parts.append(f'<h2 id="curves">{SECTIONS["curves"]}</h2>')
    curves = _img("roc", figures) + _img("pr", figures)
    parts.append(curves or "<p>Curves need both classes among the rows.</p>")

    parts.append(f'<h2 id="segments">{SECTIONS["segments"]}</h2>')
    if not report["segments"]:
        parts.append("<p>No segment could be formed (no sequence field, user or item key, and no --segment).</p>")
    for b in report["segments"]:
        parts.append(f"<h3>{e(b['title'])}</h3><p class=\"muted\">{e(b['method'])}</p>")
        parts.append('<div class="row">' + _html_table(*_segment_table(b))
                     + _img(f"segment_{b['key'].replace(':', '_')}", figures) + "</div>")

    parts.append(f'<h2 id="comparison">{SECTIONS["comparison"]}</h2>')
    if report["comparisons"]:
        parts.append(f'<p>{e(report["conventions"]["paired_test"])}.</p>')
        parts.append(_html_table(*_comparison_rows(report)))
    else:
        parts.append("<p>A comparison needs two or more checkpoints scored on the same rows.</p>")

    parts.append(f'<h2 id="history_cap">{SECTIONS["history_cap"]}</h2>')
    cap = report.get("history_cap")
    if cap:
        parts.append(f'<p>{e(cap["method"])}; sequence fields cut: {e(", ".join(cap["fields"]) or "none")}. '
                     "Brackets: 95% bootstrap interval.</p>")
        parts.append('<div class="row">' + _html_table(*_history_cap_rows(cap)) + _img("history_cap", figures)
                     + "</div>")
        if cap["comparisons"]:
            parts.append(f'<p>{e(report["conventions"]["paired_test"])}, at each cap.</p>')
            parts.append(_html_table(*_history_cap_comparisons(cap), left=2))
    else:
        parts.append(f"<p>{_NO_CAP}</p>")

    parts.append(f'<h2 id="attention">{SECTIONS["attention"]}</h2><p>{_attention_intro(report)}</p>')
    parts.append("".join(_img(k, figures) for k in figures if k.startswith("attention_")))

    parts.append(f'<h2 id="method">{SECTIONS["method"]}</h2><table><tbody>')
    for k, v in report["conventions"].items():
        parts.append(f'<tr><th class="l">{e(k)}</th><td class="l">{e(v)}</td></tr>')
    parts.append("</tbody></table>")
    if report["notes"]:
        parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in report["notes"]) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


# --------------------------------------------------------------------------------- Markdown
def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(c: Any) -> str:
        if isinstance(c, tuple):
            return f"{c[0]} {c[1]}".strip()
        return str(c).replace("|", "\\|")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(report: dict, figures: dict[str, tuple[str, bytes]]) -> str:
    """The Markdown report; figures are linked as ``plots/<key>.png``."""
    data = report["data"]

    def img(key: str) -> str:
        return f"![{figures[key][0]}](plots/{key}.png)\n" if key in figures else ""

    out = ["# recsys offline report", "",
           f"{len(report['models'])} model(s) on `{data['source']}`: {data['rows']} rows, {data['positives']} "
           f"positives (rate {_f(data['positive_rate'])}); created {report['created']}.", "",
           f"## {SECTIONS['summary']}", ""]
    header, rows = _summary_rows(report)
    out += [_md_table(["metric"] + header, rows), "", "Brackets: 95% bootstrap interval.", "",
            _md_table(*_models_rows(report)), ""]
    for s in report["other_sections"]:
        out += [f"### {s['model']}: {s.get('title', '')}", "", _md_table(s.get("columns", []), s.get("rows", [])), ""]
    out += [f"## {SECTIONS['calibration']}", "", f"ECE: {report['conventions']['ece']}.", "", img("reliability"),
            img("histograms"), f"## {SECTIONS['curves']}", "", img("roc"), img("pr"),
            f"## {SECTIONS['segments']}", ""]
    for b in report["segments"]:
        out += [f"### {b['title']}", "", b["method"], "", _md_table(*_segment_table(b)), "",
                img(f"segment_{b['key'].replace(':', '_')}")]
    out += [f"## {SECTIONS['comparison']}", ""]
    if report["comparisons"]:
        out += [report["conventions"]["paired_test"] + ".", "", _md_table(*_comparison_rows(report)), ""]
    else:
        out += ["A comparison needs two or more checkpoints scored on the same rows.", ""]
    out += [f"## {SECTIONS['history_cap']}", ""]
    cap = report.get("history_cap")
    if cap:
        out += [f"{cap['method']}; sequence fields cut: {', '.join(cap['fields']) or 'none'}. "
                "Brackets: 95% bootstrap interval.", "", _md_table(*_history_cap_rows(cap)), "", img("history_cap")]
        if cap["comparisons"]:
            out += [report["conventions"]["paired_test"] + ", at each cap.", "",
                    _md_table(*_history_cap_comparisons(cap)), ""]
    else:
        out += [_NO_CAP.replace("<code>", "`").replace("</code>", "`"), ""]
    out += [f"## {SECTIONS['attention']}", "", _attention_intro(report).replace("<code>", "`").replace("</code>", "`"), ""]
    out += [img(k) for k in figures if k.startswith("attention_")]
    out += [f"## {SECTIONS['method']}", ""]
    out += [f"- **{k}**: {v}" for k, v in report["conventions"].items()]
    out += [""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(out).rstrip() + "\n"


# ------------------------------------------------------------------------------------ writing
OUTPUTS = ("metrics.json", "report.md", "report.html")


def write_report(out_dir: str | Path, report: dict, figures: dict[str, tuple[str, bytes]]) -> Path:
    """Write the four outputs into ``out_dir`` atomically (see the module docstring)."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (tmp / "plots").mkdir()
        for key, (_, png) in figures.items():
            (tmp / "plots" / f"{key}.png").write_bytes(png)
        (tmp / "metrics.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        (tmp / "report.md").write_text(render_markdown(report, figures))
        (tmp / "report.html").write_text(render_html(report, figures))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700
        try:
            os.rename(tmp, out)  # out did not exist: the whole directory appears at once
            return out
        except OSError:
            if not out.is_dir():
                raise
        old = tmp / ".plots.old"
        if (out / "plots").exists():
            os.rename(out / "plots", old)
        os.rename(tmp / "plots", out / "plots")
        for name in OUTPUTS:
            os.replace(tmp / name, out / name)
        return out
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
