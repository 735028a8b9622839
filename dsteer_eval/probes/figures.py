"""PNG figures of a probe report (matplotlib, headless): one drawing function per probe, each
``(report, canvas)``, named in the probe's registry entry (:mod:`dsteer_eval.probes.registry`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from dsteer_eval.probes.lattice_field import quiver_png


def pyplot():
    import matplotlib  # deferred: matplotlib loads only when figures are drawn (start-up cost)

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # deferred: matplotlib loads only when figures are drawn

    return plt


class Canvas:
    """Where a probe's figures go: ``plt``, ``save(fig, name)`` (PNG into ``folder``), ``written`` names."""

    def __init__(self, folder: Path) -> None:
        self.plt = pyplot()
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written: list[str] = []

    def save(self, fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(self.folder / name, dpi=110)
        self.plt.close(fig)
        self.written.append(name)


def probe_figures(report: dict, folder: Path, draws: Iterable[Callable]) -> list[str]:
    """Draw every probe's figures (``draws``: their drawing functions, in order) into ``folder``; returns
    the file names written."""
    canvas = Canvas(folder)
    for draw in draws:
        draw(report, canvas)
    return canvas.written


def consistency_figure(report: dict, canvas: Canvas) -> None:
    plt = canvas.plt
    cons = report.get("consistency")
    if cons:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        edges, counts = cons["histogram"]["edges"], cons["histogram"]["counts"]
        ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges, edges[1:])], align="edge", edgecolor="k")
        ax.axvline(cons["cos"]["mean"], color="C3", ls="--", label=f"mean {cons['cos']['mean']:.2f}")
        null = (report.get("nulls") or {}).get("consistency")
        if null and null.get("histogram"):
            ax.stairs(null["histogram"]["counts"], null["histogram"]["edges"], color="C1", lw=1.5,
                      label=f"null adapter, cos(δ, v̄_null) (mean {null['cos']['mean']:.2f})")
        ax.axvline(0.5, color="grey", ls=":", label="0.5")
        ax.set_xlabel(r"cos($\delta_i$, $\bar v$)")
        ax.set_ylabel("prompts")
        ax.set_title(f"Directional consistency, layer {cons['layer']}")
        ax.legend()
        canvas.save(fig, "consistency_hist.png")


def spectra_figures(report: dict, canvas: Canvas) -> None:
    plt = canvas.plt
    spectra = report.get("spectra")
    if spectra:
        layers = [r["layer"] for r in spectra if "sigma1_over_sigma2" in r]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        axes[0].plot(layers, [r["sigma1_over_sigma2"] for r in spectra if "sigma1_over_sigma2" in r], "o-")
        axes[0].set_ylabel(r"$\sigma_1/\sigma_2$ of $\Delta H$")
        axes[1].plot(layers, [r["top1_energy"] for r in spectra if "top1_energy" in r], "o-", label="top-1 energy")
        with_cos = [r for r in spectra if r.get("abs_cos_u1") is not None]
        if with_cos:
            axes[1].plot([r["layer"] for r in with_cos], [r["abs_cos_u1"] for r in with_cos], "s--",
                         label=r"|cos($u_1$, $\bar v$)|")
        axes[1].set_ylim(0, 1.02)
        axes[1].legend()
        all_layers = [r["layer"] for r in spectra]
        axes[2].plot(layers, [r["spectral_entropy"] for r in spectra if "spectral_entropy" in r], "o-", label=r"$\Delta H$")
        axes[2].plot(all_layers, [r["spectral_entropy_base"] for r in spectra], "^-", label=r"$H_{base}$")
        axes[2].plot(all_layers, [r["spectral_entropy_dpo"] for r in spectra], "v--", label=r"$H_{dpo}$")
        axes[2].set_ylabel("spectral entropy (nats)")
        axes[2].legend()
        for ax in axes:
            ax.set_xlabel("layer")
        fig.suptitle("Spectra of the DPO update by layer")
        canvas.save(fig, "spectra_by_layer.png")

        shown = [r for r in spectra if r.get("singular_values")]
        if shown:
            fig, ax = plt.subplots(figsize=(5.5, 3.6))
            cmap = plt.get_cmap("viridis")
            for i, r in enumerate(shown):
                sv = r["singular_values"]
                ax.semilogy(range(1, len(sv) + 1), sv, color=cmap(i / max(len(shown) - 1, 1)), lw=1)
            ax.set_xlabel("k")
            ax.set_ylabel(r"$\sigma_k$ of $\Delta H$")
            ax.set_title("Singular values of ΔH (colour = layer, dark = early)")
            canvas.save(fig, "singular_values.png")


def identity_figure(report: dict, canvas: Canvas) -> None:
    plt = canvas.plt
    ident = report.get("steering_identity")
    if ident:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        a = ident["alphas"]
        axes[0].plot(a, ident["restoration_kl"], "o-", label=r"KL(base ‖ dpo − α$\bar v$)")
        axes[0].axhline(ident["kl_base_dpo"], color="grey", ls="--", label="KL(base ‖ dpo)")
        axes[0].set_title(f"Restoration, layer {ident['layer']}")
        axes[1].plot(a, ident["reproduction_kl"], "o-", color="C1", label=r"KL(dpo ‖ base + α$\bar v$)")
        axes[1].axhline(ident["kl_dpo_base"], color="grey", ls="--", label="KL(dpo ‖ base)")
        axes[1].set_title(f"Reproduction, layer {ident['layer']}")
        for ax in axes:
            ax.set_xlabel("α")
            ax.set_ylabel("mean next-token KL (nats)")
            ax.legend()
        canvas.save(fig, "steering_identity.png")


def projection_figure(report: dict, canvas: Canvas) -> None:
    plt = canvas.plt
    proj = [r for r in report.get("projection", {}).get("by_layer", []) if "frac_rose" in r]
    if proj:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        ax.plot([r["layer"] for r in proj], [r["frac_rose"] for r in proj], "o-", label=r"fraction with ⟨h,v̂⟩ rising")
        ax.axhline(0.5, color="grey", ls=":")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("layer")
        ax.set_ylabel("fraction of prompts")
        ax.set_title("Projection on v̄: DPO minus base")
        ax.legend()
        canvas.save(fig, "projection_by_layer.png")


def pca_figure(report: dict, canvas: Canvas) -> None:
    plt = canvas.plt
    pca = report.get("pca_cloud")
    if pca and pca.get("coords"):
        fig, ax = plt.subplots(figsize=(5.5, 4.6))
        styles = {"base": ("C0", "o", r"$H_{base}$"), "dpo": ("C3", "o", r"$H_{dpo}$"),
                  "dpo_minus_v": ("C1", "x", r"$H_{dpo} - \bar v$"), "base_plus_v": ("C2", "+", r"$H_{base} + \bar v$")}
        for key, (color, marker, label) in styles.items():
            xy = pca["coords"].get(key) or []
            if xy:
                ax.scatter([r[0] for r in xy], [r[1] if len(r) > 1 else 0.0 for r in xy], s=18, c=color,
                           marker=marker, label=label, alpha=0.75)
        evr = pca.get("explained_variance_ratio") or [0, 0]
        ax.set_xlabel(f"PC1 ({evr[0]:.0%})")
        ax.set_ylabel(f"PC2 ({evr[1]:.0%})" if len(evr) > 1 else "PC2")
        dist = pca.get("centroid_distances", {})
        ax.set_title(f"PCA at layer {pca.get('layer')}, last prompt token\n"
                     f"|c_base − c_dpo| {dist.get('base_dpo', 0):.3g}, |c_base − c(dpo − v̄)| "
                     f"{dist.get('base_dpo_minus_v', 0):.3g}", fontsize=9)
        ax.legend(fontsize=8)
        canvas.save(fig, "pca_cloud.png")


def lattice_figure(report: dict, canvas: Canvas) -> None:
    lattice = report.get("lattice_field")
    if lattice and lattice.get("points"):
        quiver_png(lattice, canvas.folder / "lattice_field.png")
        canvas.written.append("lattice_field.png")
