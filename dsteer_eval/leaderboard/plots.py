"""PNG plots of a leaderboard: each metric vs α, one line per layer, with stderr error bars.

The α=0 (unsteered) row of a model joins every layer's line; rows without a numeric α are not plotted.
Random-direction controls (``control=random:<i>`` rows of a sweep with ``--controls``) are not lines of
their own: at each α they are drawn in grey as a bar from the lowest to the highest control value with
their mean marked (x), shaded between alphas, beside the line of the model they control for.
"""

from __future__ import annotations

import io
import math
import re

from dsteer_eval.leaderboard.collect import number
from dsteer_eval.leaderboard.paired import role
from dsteer_eval.leaderboard.table import Leaderboard, model_label
from dsteer_eval.probes.figures import pyplot

Point = tuple[float, float, float]  # alpha, value, stderr (nan when unknown)


_CONTROL = re.compile(r"(, )?random:\d+")


def _bands(board: Leaderboard, value_of) -> list[tuple[str, list[tuple[float, float, float, float]]]]:
    """Control rows as bands: ``(label, [(alpha, low, mean, high)])`` per (controlled group, layer)."""

    found: dict[tuple, dict[float, list[float]]] = {}
    for i, row in enumerate(board.rows):
        if row.key.alpha is None or role(row.key).control is None:
            continue
        got = value_of(i)
        if got is None or got[0] is None:
            continue
        parent = _CONTROL.sub("", row.group).strip(" ,·") or model_label(row.key.identity)
        found.setdefault((parent, row.key.layer), {}).setdefault(row.key.alpha, []).append(got[0])
    out = []
    for (parent, layer), by_alpha in found.items():
        k = max(len(v) for v in by_alpha.values())
        points = [(a, min(v), sum(v) / len(v), max(v)) for a, v in sorted(by_alpha.items())]
        out.append((f"{parent} · layer {layer}: random controls (K={k})", points))
    return out


def _lines(board: Leaderboard, value_of) -> list[tuple[str, list[Point]]]:
    """``value_of(row_index) -> (value, stderr) | None`` as lines of points, one per (source/model, layer)."""

    groups: dict[str, tuple[dict, list]] = {}
    for i, row in enumerate(board.rows):
        found = value_of(i) if row.key.alpha is not None else None
        if found is None or found[0] is None or role(row.key).control is not None:
            continue
        point = (row.key.alpha, found[0], math.nan if found[1] is None else found[1])
        layers, unsteered = groups.setdefault(row.group, ({}, []))
        if row.key.unsteered:
            unsteered.append(point)
        else:
            layers.setdefault(row.key.layer, []).append(point)
    lines = []
    for group, (layers, unsteered) in groups.items():
        named = {"unsteered (α=0)": unsteered} if not layers else {
            "default layer" if layer is None else f"layer {layer}": points + unsteered
            for layer, points in layers.items()}
        lines += [(" · ".join(p for p in (group, name) if p), sorted(points)) for name, points in named.items()]
    return lines


def _draw(ax, lines, title: str, ylabel: str, legend: bool = True, bands=()) -> None:
    for label, points in lines:
        x, y, err = zip(*points)
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    for label, points in bands:
        x, low, mean, high = zip(*points)
        if len(x) > 1:  # a band needs two alphas; each alpha also gets its lowest-to-highest bar
            ax.fill_between(x, low, high, color="grey", alpha=0.2, step=None)
        ax.errorbar(x, mean, yerr=[[m - lo for m, lo in zip(mean, low)], [hi - m for m, hi in zip(mean, high)]],
                    color="grey", ls="--" if len(x) > 1 else "none", marker="x", capsize=4, lw=1, label=label)
    ax.axvline(0, color="grey", lw=0.6, ls=":")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("α")
    ax.set_ylabel(ylabel)
    if legend:
        ax.legend(fontsize=7)


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _file_name(name: str, taken) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("α", "alpha")).strip("._") or "plot"
    candidate, n = f"{stem}.png", 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}_{n}.png"
    return candidate


def _metric_series(board: Leaderboard):
    """(title, ylabel, file stem, value_of) for every numeric metric of every task."""
    seen = dict.fromkeys((task, key) for row in board.rows for task, metrics in row.metrics.items()
                         for key, m in metrics.items() if number(m["value"]) is not None)
    for task, key in seen:
        metric, _, filt = key.partition(",")
        shown = metric if filt == "none" else f"{metric} ({filt})"

        def value_of(i, task=task, key=key):
            m = board.rows[i].metrics.get(task, {}).get(key)
            return (number(m["value"]), m["stderr"]) if m else None

        yield f"{task}: {shown}", shown, f"{task}__{metric}" + ("" if filt == "none" else f"__{filt}"), value_of


def _column_value(board: Leaderboard, j: int):
    def value_of(i):
        cell = board.cells[i][j]
        return None if cell is None else (cell.value, cell.stderr)

    return value_of


def figures(board: Leaderboard) -> dict[str, bytes]:
    """``{file name: PNG bytes}``: ``overview.png`` (every column in a grid), then one plot per metric."""
    plt = pyplot()
    series = list(_metric_series(board)) + [
        (c.header, c.key, c.key, _column_value(board, j)) for j, c in enumerate(board.columns) if c.kind != "metric"]
    out: dict[str, bytes] = {}
    overview = [(c.header, lines, _bands(board, _column_value(board, j))) for j, c in enumerate(board.columns)
                if c.metric and (lines := _lines(board, _column_value(board, j)))]
    if overview:
        ncols = min(3, len(overview))
        nrows = math.ceil(len(overview) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
        for k, ax in enumerate(axes.flat):
            if k < len(overview):
                _draw(ax, overview[k][1], overview[k][0], "", legend=k == 0, bands=overview[k][2])
            else:
                ax.set_visible(False)
        fig.suptitle("Metrics vs α")
        out["overview.png"] = _png(plt, fig)
    for title, ylabel, stem, value_of in series:
        lines = _lines(board, value_of)
        if lines:
            fig, ax = plt.subplots(figsize=(5.5, 3.8))
            _draw(ax, lines, title, ylabel, bands=_bands(board, value_of))
            out[_file_name(stem, out)] = _png(plt, fig)
    return out
