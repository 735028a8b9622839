"""A leaderboard as Markdown, CSV, JSON and a self-contained HTML page; written atomically.

Every text is built before the first file is written, so a rendering error leaves the previous
tables in place, never a new ``.md`` beside an old ``.json``.  Files the leaderboard skipped
(unreadable or mis-shaped) are counted and named under the Markdown table, on the HTML page and in
the JSON's ``skipped``.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path

from dsteer_eval.common.output_folder import atomic_write_bytes
from dsteer_eval.leaderboard.collect import clean
from dsteer_eval.leaderboard.plots import figures as make_figures
from dsteer_eval.leaderboard.table import Cell, Leaderboard
from dsteer_eval.stats.verdicts import markdown as verdict_table

FORMAT, FORMAT_VERSION = "dsteer-eval/leaderboard", "1"
MISSING = "—"


def fmt(value: float, stderr: float | None = None) -> str:
    """``0.708 ± 0.030``: 3 decimals, more below 0.1 (3 significant digits), 1 from 100, 1.23e+05 beyond."""
    a = abs(value) or abs(stderr or 0)
    if a and (a < 1e-4 or a >= 1e5):
        spec = ".2e"
    elif a >= 100:
        spec = ".1f"
    else:
        spec = f".{max(3, 2 - math.floor(math.log10(a))) if a else 3}f"
    text = format(value, spec)
    return text if stderr is None else f"{text} ± {format(stderr, spec)}"


def _status(cell: Cell | None) -> str:
    return "failed" if cell and cell.failed is not None else "missing" if cell is None or cell.value is None else "ok"


def cell_text(cell: Cell | None, arrow: str = "") -> str:
    status = _status(cell)
    if status != "ok":
        return MISSING if status == "missing" else "failed"
    text = fmt(cell.value, cell.stderr)
    return f"{text} {arrow}" if cell.best else text


def markdown(board: Leaderboard) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    table = [["run", *(esc(c.header) for c in board.columns)]]
    for row, cells in zip(board.rows, board.cells):
        texts = [cell_text(cell, col.arrow) for cell, col in zip(cells, board.columns)]
        table.append([esc(row.label), *(f"**{t}**" if cell and cell.best else t for t, cell in zip(texts, cells))])
    widths = [max(len(line[j]) for line in table) for j in range(len(table[0]))]
    lines = ["| " + " | ".join(t.ljust(w) for t, w in zip(line, widths)) + " |" for line in table]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    lines += paired_markdown(board)
    if board.skipped:
        lines += ["", f"Skipped {len(board.skipped)} unreadable or mis-shaped file(s):"]
        lines += [f"- {s.reason}" for s in board.skipped]
    return "\n".join(lines)


def delta_text(d) -> str:
    """``+0.123 [+0.050, +0.190]*``: a paired difference with its CI; * when the CI excludes 0."""
    return MISSING if d is None else delta_text_dict(d.as_dict())


PAIRED_NOTE = ("Paired differences per document (matched by doc_id), mean with a 95 % percentile bootstrap CI "
               "(2000 seeded resamples); * = the CI excludes 0. 'vs ref': against the same side at α=0 (the base "
               "row: against DPO at α=0); 'vs control': against the mean of the norm-matched random directions at "
               "the same layer and α; 'conditioned': vs ref on the documents where base and DPO (α=0) differ.")


def paired_rows(board: Leaderboard):
    """(column, [(row label, value cell text, ref, vs ref, vs control, controls, conditioned)]) per paired column."""
    for column in board.columns:
        items = board.paired.get(column.key)
        if not items:
            continue
        out = []
        for item in items:
            controls = item.controls
            ctl = f"{fmt(controls['mean'])} ± {fmt(controls['sd'])} (K={controls['k']})" if controls else MISSING
            cond = (f"{delta_text(item.conditioned)} (n={item.n_conditioned})" if item.n_conditioned is not None
                    else MISSING)
            out.append((item.label, item.reference or MISSING, delta_text(item.vs_ref), delta_text(item.vs_control),
                        ctl, cond))
        yield column, out


def paired_markdown(board: Leaderboard) -> list[str]:
    lines = []
    for column, items in paired_rows(board):
        lines += ["", f"Paired: {column.header}", "",
                  "| run | ref | Δ vs ref [95% CI] | Δ vs control [95% CI] | controls: mean ± sd | Δ vs ref, conditioned |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += ["| " + " | ".join(t.replace("|", "\\|") for t in item) + " |" for item in items]
    if lines:
        lines += ["", PAIRED_NOTE]
    if board.claims:
        lines += ["", "D-STEER claims (verdicts computed from the paired CIs: supported / contradicted / not shown; "
                  "the same rules and words as the report's verdict card: '½' = by at least half the gap, 'overshoot' = past it; (d) decided only for a v moving toward the target, with K ≥ 19):", "", verdict_table(board.claims).rstrip()]
    return lines


def delta_text_dict(d: dict) -> str:
    """:func:`delta_text` of a PairedDelta stored as a dict (claims keep theirs as dicts)."""
    return f"{fmt(d['mean'])} [{fmt(d['low'])}, {fmt(d['high'])}]{'*' if d.get('significant') else ''}"


def csv_text(board: Leaderboard) -> str:
    """Raw numbers: one value and one stderr column per leaderboard column; "failed"; empty when missing."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    paired = {key: {item.label: item for item in items} for key, items in board.paired.items()}
    extra = [(key, which) for key in paired for which in ("vs_ref", "vs_control", "conditioned")]
    writer.writerow(["run", "source", "model", "layer", "alpha",
                     *(h for c in board.columns for h in (c.key, f"{c.key} stderr")),
                     *(f"{key} {which} {part}" for key, which in extra for part in ("mean", "low", "high"))])
    for row, cells in zip(board.rows, board.cells):
        values = []
        for cell in cells:
            if cell is None or cell.failed is not None:
                values += ["" if cell is None else "failed", ""]
            else:
                values += ["" if v is None else repr(v) for v in (cell.value, cell.stderr)]
        for key, which in extra:
            d = getattr(paired[key].get(row.label), which, None) if row.label in paired[key] else None
            values += ["", "", ""] if d is None else [repr(d.mean), repr(d.low), repr(d.high)]
        writer.writerow([row.label, row.source.label, row.model, row.key.layer or "",
                         "" if row.key.alpha is None else repr(row.key.alpha), *values])
    return out.getvalue()


def _cell_json(cell: Cell) -> dict:
    if cell.failed is not None:
        return {"status": "failed", "error": cell.failed}
    # "missing": a probe or win-rate file whose mean was NaN (no number), as the tables show it
    return {"status": _status(cell), "value": cell.value, "stderr": cell.stderr, "best": cell.best, **cell.info}


def json_data(board: Leaderboard) -> dict:
    """The leaderboard as JSON-ready data; NaN/inf anywhere become None (strict JSON has no NaN)."""
    direction = {True: "higher", False: "lower", None: None}
    return clean({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sources": [{"label": s.label, "path": str(s.path)} for s in board.sources],
        "columns": [{"key": c.key, "header": c.header, "kind": c.kind, "task": c.task, "metric": c.metric,
                     "direction": direction[c.higher_is_better]} for c in board.columns],
        "rows": [{
            "label": row.label,
            "model": row.model,
            "layer": row.key.layer,
            "alpha": row.key.alpha,
            "unsteered": row.key.unsteered,
            "cells": {c.key: _cell_json(cell) for c, cell in zip(board.columns, cells) if cell is not None},
            "metrics": row.metrics,
            # everything that depends on where the files are lives here
            "sources": {"folder": row.source.label, "path": str(row.source.path),
                        "files": [str(p) for p in row.files]},
        } for row, cells in zip(board.rows, board.cells)],
        "skipped": [{"path": str(s.path), "reason": s.reason} for s in board.skipped],
        "paired": {key: [item.as_dict() for item in items] for key, items in board.paired.items()},
        "paired_method": PAIRED_NOTE,
        "claims": [v.as_dict() for v in board.claims],
    })


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
td.best { font-weight: bold; background: #e8f5e9; }
td.failed { color: #b00020; }
td.missing { color: #999; }
figure { display: inline-block; margin: 1em 1em 0 0; }
figure img { max-width: 100%; }
figcaption { font-size: 12px; color: #555; }
"""


def html_page(board: Leaderboard, figures: dict[str, bytes]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c.header)}</th>" for c in board.columns)
    body = []
    for row, cells in zip(board.rows, board.cells):
        tds = []
        for cell, col in zip(cells, board.columns):
            status = _status(cell)
            cls = status if status != "ok" else "best" if cell.best else ""
            attrs = f' class="{cls}"' if cls else ""
            if cls == "failed":
                attrs += f' title="{e(cell.failed)}"'
            tds.append(f"<td{attrs}>{e(cell_text(cell, col.arrow))}</td>")
        body.append(f"<tr><td>{e(row.label)}</td>{''.join(tds)}</tr>")
    imgs = "".join(
        f'<figure><img alt="{e(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{e(name)}</figcaption></figure>" for name, png in figures.items())
    sources = "".join(f"<li>{e(s.label)}: <code>{e(str(s.path))}</code></li>" for s in board.sources)
    tables = []
    for column, items in paired_rows(board):
        heads = "".join(f"<th>{e(h)}</th>" for h in ("run", "ref", "Δ vs ref [95% CI]", "Δ vs control [95% CI]",
                                                      "controls: mean ± sd", "Δ vs ref, conditioned"))
        trs = "".join("<tr>" + "".join(f"<td>{e(t)}</td>" for t in item) + "</tr>" for item in items)
        tables.append(f"<h3>{e(column.header)}</h3><table><thead><tr>{heads}</tr></thead><tbody>{trs}</tbody></table>")
    paired = f"<h2>Paired differences</h2>{''.join(tables)}<p>{e(PAIRED_NOTE)}</p>" if tables else ""
    claims = "".join(f"<tr><td>{e(v.claim)}</td><td>{e(v.verdict)}</td><td>{e(delta_text_dict(v.delta))}</td>"
                     f"<td>{e(v.note)}</td></tr>" for v in board.claims)
    if claims:
        claims = ("<h2>D-STEER claims</h2><table><thead><tr><th>claim</th><th>verdict</th><th>Δ [95% CI]</th>"
                  f"<th>note</th></tr></thead><tbody>{claims}</tbody></table>")
    skipped = "".join(f"<li>{e(s.reason)}</li>" for s in board.skipped)
    if skipped:
        skipped = f"<h2>Skipped {len(board.skipped)} unreadable or mis-shaped file(s)</h2><ul>{skipped}</ul>"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>dsteer-eval leaderboard</title>'
            f"<style>{CSS}</style></head><body><h1>dsteer-eval leaderboard</h1>"
            f"<table><thead><tr><th>run</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<p>Best per column in bold with the direction arrow; mean ± stderr; — = no result.</p>"
            f"{paired}{claims}"
            f"<h2>Sources</h2><ul>{sources}</ul>{skipped}{'<h2>Plots</h2>' + imgs if imgs else ''}"
            f"</body></html>\n")


def write_leaderboard(board: Leaderboard, out_dir, *, plots: bool = True) -> dict[str, Path]:
    """Write leaderboard.{md,csv,json,html} (and plots/*.png) into ``out_dir``; returns what was written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    if plots:

        figures = make_figures(board)
    texts = {  # all of them first: an error here writes nothing
        "markdown": ("leaderboard.md", markdown(board) + "\n"),
        "csv": ("leaderboard.csv", csv_text(board)),
        "json": ("leaderboard.json",
                 json.dumps(json_data(board), indent=1, ensure_ascii=False, allow_nan=False) + "\n"),
        "html": ("leaderboard.html", html_page(board, figures)),
    }
    written = {kind: atomic_write_bytes(out / name, text.encode()) for kind, (name, text) in texts.items()}
    if figures:
        (out / "plots").mkdir(exist_ok=True)
        for name, png in figures.items():
            atomic_write_bytes(out / "plots" / name, png)
        written["plots"] = out / "plots"
    return written
