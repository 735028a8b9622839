"""The report's figures. Dose-response: fraction of the gap closed against α, per side, v̄ with its bootstrap
band, the random directions' band (min–max) and mean, the degeneration rate on a second axis, the ceiling
marked. Behaviour: rates, degenerate share and fidelity to the unsteered replies against α."""

from __future__ import annotations

import hashlib
from pathlib import Path

from dsteer_eval.probes.figures import pyplot


def report_figures(report: dict, folder: Path) -> list[dict]:
    """Every figure of the report, each entry naming its section."""
    return dose_response_figures(report, folder) + behaviour_figures(report, folder) + where_figures(report, folder)


def file_name(name: str, taken=()) -> str:
    """``name`` (``stem.png``) made file-safe: kept when it already is; else every other character becomes
    ``_`` and a short hash of the exact name is added, so that two names that slug alike (``v̄ (own)`` and
    ``v̄ [own]``, ``runs/a`` and ``runs_a``) get two files. A name already ``taken`` (compared without case,
    for case-insensitive file systems) gets the hash too, then a counter."""
    stem, dot, ext = name.rpartition(".")
    stem, ext = (stem, f".{ext}") if dot else (name, "")
    slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in stem)
    hashed = f"{slug}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    used = {t.lower() for t in taken}
    candidates = ([slug] if slug == stem else []) + [hashed] + [f"{hashed}_{i}" for i in range(2, len(used) + 3)]
    return next(c + ext for c in candidates if (c + ext).lower() not in used)


def _save(plt, fig, folder: Path, name: str, title: str, section: str) -> dict:
    """Lay out, write (the name made file-safe and unique in ``folder``) and close ``fig``; its entry for the
    page."""
    fig.tight_layout()
    name = file_name(name, [p.name for p in folder.iterdir()])
    fig.savefig(folder / name, dpi=100)
    plt.close(fig)
    return {"file": name, "title": title, "section": section}


def dose_response_figures(report: dict, folder: Path) -> list[dict]:
    plt = pyplot()
    written = []
    for curve in report["curves"]:
        sides = [(s, found) for s, found in curve["sides"].items() if found["rows"]]
        if not sides:
            continue
        fig, axes = plt.subplots(1, len(sides), figsize=(6 * len(sides), 4), squeeze=False)
        for ax, (side, found) in zip(axes[0], sides):
            rows = sorted(found["rows"], key=lambda r: abs(r["alpha"]))
            for layer in sorted({str(r["layer"]) for r in rows}):
                mine = [r for r in rows if str(r["layer"]) == layer and r["closure"]["fraction"] is not None]
                # every curve starts at α = 0, where the fraction closed is 0 by definition: a one-α grid is a
                # line from the origin, not a lone dot on an axis zoomed to it
                x = [0.0] + [abs(r["alpha"]) for r in mine]
                ax.plot(x, [0.0] + [r["closure"]["fraction"] for r in mine], "o-", label=f"v̄, layer {layer}")
                ax.fill_between(x, [0.0] + [r["closure"]["low"] for r in mine],
                                [0.0] + [r["closure"]["high"] for r in mine], alpha=0.25)
                banded = [r for r in mine if r["random_band"]]
                if banded:  # the random directions at each α: a bar from the lowest to the highest, their mean
                    bx = [abs(r["alpha"]) for r in banded]
                    ax.vlines(bx, [r["random_band"][0] for r in banded], [r["random_band"][1] for r in banded],
                              color="grey", lw=6, alpha=0.5, label=f"random directions (K = {len(banded[0]['random'])})")
                    ax.plot(bx, [r["random_mean"] for r in banded], "_", color="k", ms=14)
                beyond = [abs(r["alpha"]) for r in mine if r["beyond_ceiling"]]
                if beyond:
                    ax.axvline(min(beyond), color="C3", ls=":", label="beyond the ceiling")
                degen = [r for r in mine if r["degeneration_rate"] is not None]
                if degen:
                    twin = ax.twinx()
                    twin.plot([abs(r["alpha"]) for r in degen], [r["degeneration_rate"] for r in degen], "x:",
                              color="C3")
                    twin.set_ylabel("degenerate outputs", color="C3")
                    twin.set_ylim(0, 1)
            ax.axhline(0, color="k", lw=0.8)
            ax.axhline(1, color="k", lw=0.8, ls="--")
            low, high = ax.get_ylim()
            ax.set_ylim(min(low, -0.1), max(high, 1.1))  # 0 (no change) and 1 (the other side) always in view
            ax.set_xlabel("|α| (" + ("DPO − |α|·v̄" if side == "dpo" else "base + α·v̄") + ")")
            ax.set_ylabel("fraction of the base–DPO gap closed")
            ax.set_title(found["meaning"], fontsize=9)
            ax.legend(fontsize=8)
        run = f"{curve['label']}: " if curve.get("label") else ""
        fig.suptitle(f"{run}{curve['task']} / {curve['metric']}")
        prefix = f"{curve['label']}_" if curve.get("label") else ""
        written.append(_save(plt, fig, folder, f"dose_response_{prefix}{curve['task']}_{curve['metric']}.png",
                             f"{run}{curve['task']} / {curve['metric']}", "dose_response"))
    return written


def behaviour_figures(report: dict, folder: Path) -> list[dict]:
    """Per generation task: per side, the rates (v̄ with its CI, the random directions' band) and the degenerate
    share against |α|, and fidelity to the unsteered replies (BLEU, ROUGE-L) against |α|."""
    plt = pyplot()
    written = []
    for entry in report.get("behaviour", []):
        sides = [(s, found) for s, found in entry["sides"].items() if len(found["rows"]) > 1]
        if not sides:
            continue
        fig, axes = plt.subplots(len(sides), 2, figsize=(12, 4 * len(sides)), squeeze=False)
        for (side, found), (left, right) in zip(sides, axes):
            for layer in sorted({str(r["layer"]) for r in found["rows"] if r["layer"] is not None}):
                rows = [found["rows"][0]] + sorted((r for r in found["rows"] if str(r["layer"]) == layer),
                                                   key=lambda r: abs(r["alpha"]))
                x = [abs(r["alpha"]) for r in rows]
                for i, metric in enumerate(entry["rates"]):
                    cells = [r["rates"].get(metric) for r in rows]
                    keep = [(xi, c) for xi, c in zip(x, cells) if c]
                    if not keep:
                        continue
                    left.plot([k[0] for k in keep], [k[1]["mean"] for k in keep], "o-", color=f"C{i}",
                              label=f"{metric}, v̄ layer {layer}")
                    left.fill_between([k[0] for k in keep], [k[1]["low"] for k in keep], [k[1]["high"] for k in keep],
                                      color=f"C{i}", alpha=0.2)
                    _random_band(left, rows, lambda r, m=metric: (r["random"] or {}).get("rates", {}).get(m), f"C{i}")
                degen = [(abs(r["alpha"]), r["degenerate"]["share"]) for r in rows if r["degenerate"]]
                if degen:
                    left.plot([d[0] for d in degen], [d[1] for d in degen], "x:", color="C3", label="degenerate share")
                for i, name in enumerate(("bleu", "rougeL")):
                    cells = [(abs(r["alpha"]), r["fidelity"].get(name)) for r in rows[1:]]
                    cells = [(0.0, {"mean": 100.0, "low": 100.0, "high": 100.0})] + [c for c in cells if c[1]]
                    right.plot([c[0] for c in cells], [c[1]["mean"] for c in cells], "o-", color=f"C{i + 4}",
                               label=f"{name} vs unsteered, v̄ layer {layer}")
                    right.fill_between([c[0] for c in cells], [c[1]["low"] for c in cells],
                                       [c[1]["high"] for c in cells], color=f"C{i + 4}", alpha=0.2)
                    _random_band(right, rows, lambda r, n=name: (r["random"] or {}).get("fidelity", {}).get(n),
                                 f"C{i + 4}")
            what = "DPO − |α|·v̄" if side == "dpo" else "base + α·v̄"
            left.set_ylim(-0.02, 1.02)
            left.set_xlabel(f"|α| ({what})")
            left.set_ylabel("rate (degenerate outputs screened out)")
            left.set_title(f"{side} side: behaviour (hatched: random directions' band)", fontsize=9)
            left.legend(fontsize=7)
            right.set_ylim(0, 102)
            right.set_xlabel(f"|α| ({what})")
            right.set_ylabel("fidelity to the same side's α = 0 replies")
            right.set_title(f"{side} side: oversteering", fontsize=9)
            right.legend(fontsize=7)
        run = f"{entry['label']}: " if entry.get("label") else ""
        fig.suptitle(f"{run}{entry['task']}: behaviour along the grid")
        prefix = f"{entry['label']}_" if entry.get("label") else ""
        written.append(_save(plt, fig, folder, f"behaviour_{prefix}{entry['task']}.png",
                             f"{run}{entry['task']}: behaviour", "behaviour"))
    return written


def _random_band(ax, rows, pick, color) -> None:
    banded = [(abs(r["alpha"]), pick(r)) for r in rows]
    banded = [(x, b) for x, b in banded if b]
    if banded:
        ax.fill_between([b[0] for b in banded], [b[1]["low"] for b in banded], [b[1]["high"] for b in banded],
                        facecolor="none", edgecolor=color, hatch="//", alpha=0.5)
        ax.plot([b[0] for b in banded], [b[1]["mean"] for b in banded], "--", color=color, lw=0.8)


def where_figures(report: dict, folder: Path) -> list[dict]:
    """Per task metric: the fraction closed on the eval documents (with its CI and the random band) and on the
    selection documents, by candidate (sweep, layer), one panel per side; the chosen candidate ringed."""
    plt = pyplot()
    written = []
    for entry in report.get("where", []):
        sides = [(s, f) for s, f in entry["sides"].items() if f["candidates"]]
        if not sides:
            continue
        fig, axes = plt.subplots(1, len(sides), figsize=(7 * len(sides), 4), squeeze=False)
        for ax, (side, found) in zip(axes[0], sides):
            cands = found["candidates"]
            x = list(range(len(cands)))
            names = [f"{c['label'] + ' ' if c['label'] else ''}L{c['layer']}" for c in cands]
            ev = [c["eval"] for c in cands]
            ax.errorbar(x, [e["fraction"] for e in ev], yerr=[[e["fraction"] - e["low"] for e in ev],
                                                               [e["high"] - e["fraction"] for e in ev]],
                        fmt="o", color="C0", capsize=3, label="v̄ on eval rows [95 % CI]")
            ax.plot(x, [c["select"]["fraction"] for c in cands], "s", color="C1", mfc="none",
                    label=f"v̄ on selection rows ({entry['select_task']})")
            for xi, c in zip(x, cands):
                if c["random_band"]:
                    ax.vlines(xi + 0.15, c["random_band"][0], c["random_band"][1], color="grey", lw=4, alpha=0.5)
                if c["chosen"]:
                    ax.plot([xi], [c["eval"]["fraction"]], "o", ms=14, mfc="none", color="C3", label="chosen")
            ax.axhline(0, color="k", lw=0.8)
            ax.axhline(1, color="k", lw=0.8, ls="--")
            low, high = ax.get_ylim()
            ax.set_ylim(min(low, -0.1), max(high, 1.1))  # 0 (no change) and 1 (the other side) always in view
            ax.set_xticks(x, names, rotation=30, fontsize=8)
            ax.set_ylabel("fraction of the base–DPO gap closed")
            ax.set_title(f"{side} side, α = {found['alpha']:g} (grey bars: random directions' band)", fontsize=9)
            ax.legend(fontsize=7)
        fig.suptitle(f"{entry['task']} / {entry['metric']}: where it works")
        written.append(_save(plt, fig, folder, f"where_{entry['task']}_{entry['metric']}.png",
                             f"{entry['task']} / {entry['metric']}: where", "where"))
    return written
