"""The dose-response figure: fraction of the gap closed against α, per side, v̄ with its bootstrap band,
the random directions' band (min–max) and mean, the degeneration rate on a second axis, the ceiling marked."""

from __future__ import annotations

from pathlib import Path

from dsteer_eval.probes.figures import pyplot


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
                x = [abs(r["alpha"]) for r in mine]
                ax.plot(x, [r["closure"]["fraction"] for r in mine], "o-", label=f"v̄, layer {layer}")
                ax.fill_between(x, [r["closure"]["low"] for r in mine], [r["closure"]["high"] for r in mine],
                                alpha=0.25)
                banded = [r for r in mine if r["random_band"]]
                if banded:
                    bx = [abs(r["alpha"]) for r in banded]
                    ax.fill_between(bx, [r["random_band"][0] for r in banded], [r["random_band"][1] for r in banded],
                                    color="grey", alpha=0.25, label=f"random directions (K = {len(banded[0]['random'])})")
                    ax.plot(bx, [r["random_mean"] for r in banded], "--", color="grey")
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
            ax.set_xlabel("|α| (" + ("DPO − |α|·v̄" if side == "dpo" else "base + α·v̄") + ")")
            ax.set_ylabel("fraction of the base–DPO gap closed")
            ax.set_title(found["meaning"], fontsize=9)
            ax.legend(fontsize=8)
        run = f"{curve['label']}: " if curve.get("label") else ""
        fig.suptitle(f"{run}{curve['task']} / {curve['metric']}")
        fig.tight_layout()
        prefix = f"{curve['label']}_" if curve.get("label") else ""
        name = "".join(c if c.isalnum() or c in "._-" else "_" for c in
                       f"dose_response_{prefix}{curve['task']}_{curve['metric']}.png")
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        written.append({"file": name, "title": f"{run}{curve['task']} / {curve['metric']}"})
    return written
