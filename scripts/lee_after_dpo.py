"""Lee et al. on the embedded model, part 2 (issue 35 item 4): what toxicity DPO did to SmolLM2's MLP value vectors,
their keys, their activations and the residual stream — each number beside a control. Writes
results/lee_smollm2/after_dpo.{json,md} and the figures results/lee_smollm2/fig_*.png.

    .venv/bin/python scripts/lee_after_dpo.py        # ~5 min on 2 cores, after scripts/toxicity_pipeline.sh ship

Models: the base (embedded SmolLM2-135M-Instruct), the DPO model (the shipped toxicity adapter, LoRA merged into
the weights) and the null model (the same adapter with every lora_B's rows permuted by a seeded permutation: the
same spectrum and size per module, no preference; dsteer_eval.dpo.null_adapter.permute_lora_B, merged).

Data: the toxicity pairs (results/toxicity_pair/toxicity_pairs.jsonl.gz). The probe that ranks the value vectors
is fitted on the train and vector parts' texts (prompt + continuation; 1 = the steered, scored-toxic rejected
continuation, 0 = the unsteered chosen one) at site 30 (the final post-norm state, mean over the text's tokens) and
scored on the probe part; every measurement on the models reads the eval part's texts (never trained on, never
used to fit the probe), both models fed the same tokens.

Measurements (controls in brackets):
* top value vectors by cos with γ ⊙ w (the probe moved through the final norm) [the best match to 20 random
  directions];
* the weight change of the top-128 toxic neurons' value vectors and keys, DPO vs base [20 random sets of 128
  neurons; the null model];
* the mean activation of the top-5 / top-128 toxic neurons over the eval texts' tokens, base vs DPO, paired per
  text with a bootstrap CI [20 random sets of 5 neurons; the null model] (Fig 2);
* δx, the DPO model's mean residual minus the base's over the same tokens, at every site: its norm, and cos(δx, v̄)
  with the shipped v̄ of the same site [cos with random directions: ±2/√d];
* per layer, cos(ΔW_out[:, j], δx) between each neuron's value-vector change and the offset at the layer's output
  site [the null model's changes against its own offset] (Fig 5);
* PCA of the residual entering the top neuron's layer, base and DPO states of the same tokens, coloured by that
  neuron's activation (Fig 4).
"""

from __future__ import annotations

import copy
import gzip
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsteer_eval.dpo.null_adapter import permute_lora_B  # noqa: E402
from dsteer_eval.models.embedded import default_adapter, default_vector  # noqa: E402
from dsteer_eval.models.loading import load_model  # noqa: E402
from dsteer_eval.probes.toxicity_probe import choose_l2, fit_probe, mean_states, score  # noqa: E402
from dsteer_eval.probes.value_vectors import (  # noqa: E402
    logit_lens,
    neuron_activations,
    rank_by_cosine,
    value_vectors,
    weight_change,
)
from dsteer_eval.stats.bootstrap import paired_bootstrap  # noqa: E402
from dsteer_eval.steering.capture import record  # noqa: E402
from dsteer_eval.steering.sites import resolve_parts  # noqa: E402
from dsteer_eval.vectors import load_vectors  # noqa: E402

OUT = ROOT / "results" / "lee_smollm2"
PAIRS = ROOT / "results" / "toxicity_pair" / "toxicity_pairs.jsonl.gz"
K, TOP, FEW, SEED = 20, 128, 5, 0
ART = ROOT / "dsteer_eval" / "artifacts" / "smollm2" / "toxicity"
SITE = 29  # where Table 2's directions are subtracted
LABEL = "rejected (probe-steered, scored toxic) vs chosen (unsteered, scored non-toxic) continuation"


def merged(model, adapter: str, state=None):
    """A plain model with the adapter (or its permuted state) merged into a copy of ``model``'s weights."""
    from peft import PeftModel, set_peft_model_state_dict

    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), adapter)
    if state is not None:
        set_peft_model_state_dict(peft_model, state)
    return peft_model.merge_and_unload().eval()


def lora_state(adapter: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(adapter) / "adapter_model.safetensors"))


def per_text(model, tok, texts, neurons) -> np.ndarray:
    """(texts, neurons): each text's mean activation of each neuron over its tokens."""
    rows = []
    for text in texts:
        enc = tok(text, return_tensors="pt")
        rows.append(neuron_activations(model, enc.input_ids, enc.attention_mask, neurons).numpy())
    return np.stack(rows).astype(np.float64)


@torch.no_grad()
def site_means(model, tok, texts, sites) -> dict[int, np.ndarray]:
    """site -> (texts, d): each text's mean state over its tokens."""
    out = {s: [] for s in sites}
    with record(model, sites) as seen:
        for text in texts:
            enc = tok(text, return_tensors="pt")
            model(**enc)
            for s in sites:
                out[s].append(seen[s][0].double().mean(0).numpy())
    return {s: np.stack(v) for s, v in out.items()}


@torch.no_grad()
def token_states(model, tok, texts, site) -> np.ndarray:
    rows = []
    with record(model, [site]) as seen:
        for text in texts:
            model(**tok(text, return_tensors="pt"))
            rows.append(seen[site][0].double().numpy())
    return np.concatenate(rows)


def cos(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> None:
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    rows = [json.loads(x) for x in gzip.open(PAIRS, "rt", encoding="utf-8")]
    adapter = str(default_adapter(pair="toxicity"))
    vbar = load_vectors(str(default_vector(pair="toxicity")))
    base, tok, path = load_model(None, device="cpu")
    parts = resolve_parts(base)
    n_layers, width, d = parts.num_layers, base.config.intermediate_size, parts.hidden_size
    dpo = merged(base, adapter)
    null = merged(base, adapter, permute_lora_B(lora_state(adapter), seed=SEED))

    # --- the probe (site 30, base model), fitted on train + vector, scored on the probe part
    fit_rows = [r for r in rows if r["part"] in ("train", "vector")]
    probe_rows = [r for r in rows if r["part"] == "probe"]
    eval_rows = [r for r in rows if r["part"] == "eval"]

    def texts_labels(rs):
        return [r["prompt"] + r[s] for r in rs for s in ("chosen", "rejected")], [0, 1] * len(rs)

    fit_texts, fit_labels = texts_labels(fit_rows)
    held_texts, held_labels = texts_labels(probe_rows)
    site = n_layers
    fit_states = mean_states(base, tok, fit_texts, site=site)
    l2, cv = choose_l2(fit_states, np.array(fit_labels), site=site, label_name=LABEL)
    probe = fit_probe(fit_states, fit_labels, site=site, label_name=LABEL, l2=l2)
    probe_score = {"l2": l2, "l2_cross_validated": {str(k): v for k, v in cv.items()},
                   "train": score(probe, fit_states, fit_labels),
                   "held_out": score(probe, mean_states(base, tok, held_texts, site=site), held_labels)}
    gamma = parts.final_norm.weight.detach().double().numpy()
    direction = torch.tensor(gamma * probe.weight, dtype=torch.float32)
    ranked = rank_by_cosine(base, direction, top=TOP)
    top_neurons = [(n.layer, n.index) for n in ranked]
    values = {n.layer: value_vectors(base, n.layer) for n in ranked[:10]}
    top10 = [{"layer": n.layer, "index": n.index, "cosine": n.cosine,
              "lens": [t for t, _ in logit_lens(base, tok, values[n.layer][n.index], top=10)]} for n in ranked[:10]]
    write_directions(base, path, direction, ranked)
    gen = torch.Generator().manual_seed(SEED)
    random_best = [rank_by_cosine(base, torch.randn(d, generator=gen), top=1)[0].cosine for _ in range(K)]
    p_best = (1 + sum(x >= ranked[0].cosine for x in random_best)) / (K + 1)

    # --- weight change of the top-128 toxic neurons, against random sets and the null model
    def change_summary(rows_):
        keys = ("value_cos", "value_rel_change", "gate_rel_change", "up_rel_change")
        return {k: float(np.nanmean([r[k] for r in rows_])) for k in keys}

    top_change = change_summary(weight_change(base, dpo, top_neurons))
    null_change = change_summary(weight_change(base, null, top_neurons))
    random_changes = []
    for _ in range(K):
        picks = rng.choice(n_layers * width, size=TOP, replace=False)
        random_changes.append(change_summary(weight_change(base, dpo, [divmod(int(f), width) for f in picks])))

    # --- activations of the toxic neurons on the eval texts (the same tokens for every model)
    eval_texts = [r["prompt"] + r["rejected"] for r in eval_rows]
    eval_chosen = [r["prompt"] + r["chosen"] for r in eval_rows]
    random_sets = [[divmod(int(f), width) for f in rng.choice(n_layers * width, size=FEW, replace=False)]
                   for _ in range(K)]
    neurons = top_neurons + [n for s in random_sets for n in s]
    acts = {name: per_text(m, tok, eval_texts, neurons) for name, m in (("base", base), ("dpo", dpo), ("null", null))}

    def drop(name, cols):
        a, b = acts[name][:, cols].mean(1), acts["base"][:, cols].mean(1)
        return paired_bootstrap(a, b).as_dict() | {"base_mean": float(b.mean()), "model_mean": float(a.mean())}

    few, all_top = list(range(FEW)), list(range(TOP))
    activation = {
        "top5": {"dpo": drop("dpo", few), "null": drop("null", few)},
        "top128": {"dpo": drop("dpo", all_top), "null": drop("null", all_top)},
        "random5": [drop("dpo", list(range(TOP + FEW * i, TOP + FEW * (i + 1))))["mean"] for i in range(K)],
    }
    activation["top5"]["dpo_rank_among_random"] = 1 + sum(x <= activation["top5"]["dpo"]["mean"]
                                                          for x in activation["random5"])
    # the write of the top-128 toxic neurons along the probe: Σ_j act_j · (v_j · ĝw), per text
    unit = (direction / direction.norm()).double()
    proj = np.array([float(value_vectors(base, l)[i].double() @ unit) for l, i in top_neurons])
    write = {name: acts[name][:, :TOP] @ proj for name in acts}
    toxic_write = {"dpo": paired_bootstrap(write["dpo"], write["base"]).as_dict(),
                   "null": paired_bootstrap(write["null"], write["base"]).as_dict(),
                   "base_mean": float(write["base"].mean())}

    # --- the residual offset δx at every site, on the same tokens (rejected and chosen texts together)
    both = eval_texts + eval_chosen
    sites = list(range(1, n_layers))
    means = {name: site_means(m, tok, both, sites) for name, m in (("base", base), ("dpo", dpo), ("null", null))}
    offset = {}
    for s in sites:
        dx = (means["dpo"][s] - means["base"][s]).mean(0)
        nx = (means["null"][s] - means["base"][s]).mean(0)
        v = vbar.vectors[s].double().numpy() if s in vbar.vectors else None
        offset[s] = {"norm": float(np.linalg.norm(dx)), "null_norm": float(np.linalg.norm(nx)),
                     "state_norm": float(np.linalg.norm(means["base"][s], axis=1).mean()),
                     "cos_vbar": cos(dx, v) if v is not None else None,
                     "null_cos_vbar": cos(nx, v) if v is not None else None}

    # --- cos(ΔW_out[:, j], δx at the layer's output site) for every neuron of every layer
    fig5 = {}
    for layer in range(n_layers - 1):
        s = layer + 1
        dx = torch.tensor((means["dpo"][s] - means["base"][s]).mean(0))
        nx = torch.tensor((means["null"][s] - means["base"][s]).mean(0))
        for name, m, off in (("dpo", dpo, dx), ("null", null, nx)):
            delta = (value_vectors(m, layer) - value_vectors(base, layer)).double()
            c = (delta @ off) / (delta.norm(dim=1) * off.norm()).clamp_min(1e-30)
            c = c[delta.norm(dim=1) > 0].numpy()
            fig5.setdefault(layer, {})[name] = {
                "n": int(len(c)), "mean": float(c.mean()) if len(c) else None,
                "q05_q50_q95": [float(x) for x in np.quantile(c, [0.05, 0.5, 0.95])] if len(c) else None,
                "share_below_-0.5": float((c < -0.5).mean()) if len(c) else None,
                "share_above_0.5": float((c > 0.5).mean()) if len(c) else None, "values": c}

    # --- Fig 4: PCA of the residual entering the top neuron's layer
    top_layer, top_index = top_neurons[0]
    pca_texts = eval_texts[:40]
    xb, xd = token_states(base, tok, pca_texts, top_layer), token_states(dpo, tok, pca_texts, top_layer)
    centre = np.concatenate([xb, xd]).mean(0)
    _, _, vt = np.linalg.svd(np.concatenate([xb, xd]) - centre, full_matrices=False)
    pb, pd = (xb - centre) @ vt[:2].T, (xd - centre) @ vt[:2].T

    def neuron_act(model_, texts):  # the top neuron's activation at every token, the PCA's tokens in order
        return np.concatenate([neuron_activations(model_, enc.input_ids, enc.attention_mask, [(top_layer, top_index)],
                                                  per_token=True)[:, 0].double().numpy()
                               for enc in (tok(text, return_tensors="pt") for text in texts)])

    ab, ad = neuron_act(base, pca_texts), neuron_act(dpo, pca_texts)
    figures(fig5, offset, pb, pd, ab, ad, (top_layer, top_index))

    result = {
        "model": "SmolLM2-135M-Instruct (embedded); DPO = shipped toxicity adapter merged; null = its lora_B rows "
                 "permuted (seed 0), merged", "model_path": path, "adapter": adapter,
        "pairs": str(PAIRS.relative_to(ROOT)), "parts": {"probe_fit": "train + vector", "probe_scored": "probe",
                                                          "measured_on": "eval"},
        "n_eval_pairs": len(eval_rows), "probe": {"site": site, "labels": LABEL, **probe_score},
        "top10": top10, "best_cos": ranked[0].cosine, "random_best_cos": random_best, "p_best": p_best,
        "layers_of_top128": np.bincount([n.layer for n in ranked], minlength=n_layers).tolist(),
        "weight_change": {"top128_dpo": top_change, "top128_null": null_change, "random128_dpo": random_changes},
        "activation": activation, "toxic_write_along_probe": toxic_write,
        "offset": {str(s): v for s, v in offset.items()},
        "fig5": {str(k): {n: {kk: vv for kk, vv in v.items() if kk != "values"} for n, v in val.items()}
                 for k, val in fig5.items()},
        "pca": {"layer": top_layer, "neuron": top_index, "texts": len(pca_texts), "tokens": int(len(pb)),
                "mean_activation_base": float(ab.mean()), "mean_activation_dpo": float(ad.mean()),
                "shift_pc1_pc2": [float(x) for x in (pd - pb).mean(0)]},
        "k": K, "seed": SEED,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "after_dpo.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    (OUT / "after_dpo.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


def write_directions(base, path, direction, ranked) -> None:
    """What Table 2's interventions subtract, as steering-vector files at site 29 (the residual entering the last
    block: the deepest pre-norm state a steering hook reaches), each of unit norm: the probe moved through the final
    norm (γ ⊙ w), the top toxic value vector, SVD.U[0] of the top 128 (signed to point along the probe); and the
    ranked neurons for ``steered`` ``scale_keys=toxic:K`` (Table 4)."""
    from dsteer_eval.probes.value_vectors import top_svd
    from dsteer_eval.vectors import save_vectors

    unit = direction / direction.norm()
    top = value_vectors(base, ranked[0].layer)[ranked[0].index]
    u0 = top_svd(base, ranked, k=1)[0]
    u0 = u0 if float(u0 @ unit) >= 0 else -u0
    for name, vec, what in (("probe_final", unit, "toxicity probe (site 30) moved through the final norm"),
                            ("value_top1", top / top.norm(), f"value vector L{ranked[0].layer}.{ranked[0].index}"),
                            ("svd_u0", u0 / u0.norm(), f"SVD.U[0] of the top {len(ranked)} toxic value vectors")):
        save_vectors(ART / f"{name}.safetensors", {SITE: vec.float()}, model=base, model_id=path,
                     method=f"lee-{name.replace('_', '-')}", extra={"what": what, "unit": True,
                                                                    "written_by": "scripts/lee_after_dpo.py"})
    (ART / "toxic_neurons.json").write_text(json.dumps({
        "what": "value vectors of the base model ranked by cos with the toxicity probe moved through the final norm "
                "(scripts/lee_after_dpo.py); for steered scale_keys=toxic:K",
        "neurons": [[n.layer, n.index] for n in ranked], "cosines": [n.cosine for n in ranked]}, indent=1) + "\n")


def figures(fig5, offset, pb, pd, ab, ad, top) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted(fig5)
    shown = [layer for layer in layers if layer % 4 == 0 or layer == layers[-1]]
    fig, axes = plt.subplots(1, len(shown), figsize=(2.2 * len(shown), 2.4), sharey=True)
    for ax, layer in zip(axes, shown):
        ax.hist(fig5[layer]["dpo"]["values"], bins=30, range=(-1, 1), color="C0", alpha=0.7, label="DPO")
        ax.hist(fig5[layer]["null"]["values"], bins=30, range=(-1, 1), color="C7", alpha=0.5, label="null")
        ax.set_title(f"layer {layer}", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.supxlabel("cos(ΔW_out[:, j], δx at the layer's output)", fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "fig_dw_out_vs_offset.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.8, 4))
    lim = np.quantile(np.abs(np.concatenate([ab, ad])), 0.98)
    ax.scatter(pb[:, 0], pb[:, 1], c=ab, cmap="coolwarm", vmin=-lim, vmax=lim, s=6, marker="o", label="base")
    sc = ax.scatter(pd[:, 0], pd[:, 1], c=ad, cmap="coolwarm", vmin=-lim, vmax=lim, s=8, marker="x", label="DPO")
    fig.colorbar(sc, label=f"activation of L{top[0]}.{top[1]}")
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.legend(fontsize=7)
    ax.set_title(f"residual entering layer {top[0]}, eval texts (base o, DPO x)", fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "fig_pca_top_neuron.png", dpi=110)
    plt.close(fig)


def markdown(r: dict) -> str:
    pct = lambda x: f"{100 * x:.1f} %"  # noqa: E731
    ci = lambda d: f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"  # noqa: E731
    p, w, a, t = r["probe"], r["weight_change"], r["activation"], r["toxic_write_along_probe"]
    rand = w["random128_dpo"]
    lines = [
        "# Lee et al. on SmolLM2, part 2: what toxicity DPO changed", "",
        f"Models: {r['model']}. Pairs: `{r['pairs']}`; the probe is fitted on the {r['parts']['probe_fit']} parts, "
        f"scored on the {r['parts']['probe_scored']} part; every model measurement reads the {r['n_eval_pairs']} "
        f"eval-part pairs (never trained on), all models fed the same tokens. Written by `scripts/lee_after_dpo.py`.", "",
        f"**Probe** (site {p['site']}, mean over the text's tokens; {p['labels']}; L2 {p['l2']:g} by 5-fold CV): "
        f"held-out accuracy {pct(p['held_out']['accuracy'])} (balanced {pct(p['held_out']['balanced_accuracy'])}) "
        f"on {p['held_out']['n']} texts; on its own rows {pct(p['train']['accuracy'])}.", "",
        f"**Toxic value vectors** (cos with γ ⊙ w over all 46,080): the best reaches {r['best_cos']:.3f}; the best "
        f"match to each of {r['k']} random directions {min(r['random_best_cos']):.3f} … {max(r['random_best_cos']):.3f}: "
        f"p = {r['p_best']:.3f}.", "",
        "| rank | neuron | cos | logit lens (top 10) |", "| ---: | --- | ---: | --- |"]
    for i, n in enumerate(r["top10"], 1):
        tokens = ", ".join(f"`{x.strip() or repr(x)}`" for x in n["lens"]).replace("|", "\\|")
        lines.append(f"| {i} | L{n['layer']}.{n['index']} | {n['cosine']:.3f} | {tokens} |")
    rv = [x["value_rel_change"] for x in rand]
    lines += [
        "", "**Weight change of the top-128 toxic neurons** (mean over the 128; ‖Δ‖/‖·‖ relative change):", "",
        "| | value cos | value rel. change | gate-row rel. change | up-row rel. change |", "| --- | ---: | ---: | ---: | ---: |",
        *[f"| {name} | {x['value_cos']:.5f} | {x['value_rel_change']:.4f} | {x['gate_rel_change']:.4f} | "
          f"{x['up_rel_change']:.4f} |" for name, x in (("top 128, DPO", w["top128_dpo"]), ("top 128, null", w["top128_null"]))],
        f"| {r['k']} random sets of 128, DPO (range) | {min(x['value_cos'] for x in rand):.5f} … "
        f"{max(x['value_cos'] for x in rand):.5f} | {min(rv):.4f} … {max(rv):.4f} | "
        f"{min(x['gate_rel_change'] for x in rand):.4f} … {max(x['gate_rel_change'] for x in rand):.4f} | "
        f"{min(x['up_rel_change'] for x in rand):.4f} … {max(x['up_rel_change'] for x in rand):.4f} |", "",
        "**Activations on the same tokens** (mean over each eval text's tokens, rejected continuations; DPO − base, "
        "paired bootstrap 95 % CI over texts):", "",
        f"* top-5 toxic neurons: base {a['top5']['dpo']['base_mean']:+.4f}, DPO − base {ci(a['top5']['dpo'])}; null − "
        f"base {ci(a['top5']['null'])}; {r['k']} random sets of 5 neurons, DPO − base: {min(a['random5']):+.4f} … "
        f"{max(a['random5']):+.4f} (the top 5's change ranks {a['top5']['dpo_rank_among_random']} of {r['k'] + 1} from "
        "the most negative);",
        f"* top-128: base {a['top128']['dpo']['base_mean']:+.4f}, DPO − base {ci(a['top128']['dpo'])}; null − base "
        f"{ci(a['top128']['null'])};",
        f"* what the top 128 write along the probe, Σ act·(v·ŵ): base {t['base_mean']:+.4f}, DPO − base {ci(t['dpo'])}, "
        f"null − base {ci(t['null'])}.", "",
        "**The offset δx** (mean DPO − base state over the eval texts' tokens) and v̄ (the shipped toxicity v̄ of the "
        "same site: last prompt token, vector part). Random directions: |cos| < 2/√576 ≈ 0.083 for 95 %.", "",
        "| site | ‖δx‖ | ‖δx‖ null | mean ‖x‖ | cos(δx, v̄) | cos(δx_null, v̄) |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s, o in r["offset"].items():
        fmt = lambda x: "—" if x is None else f"{x:+.3f}"  # noqa: E731
        lines.append(f"| {s} | {o['norm']:.2f} | {o['null_norm']:.2f} | {o['state_norm']:.0f} | {fmt(o['cos_vbar'])} | "
                     f"{fmt(o['null_cos_vbar'])} |")
    lines += ["", "**cos(ΔW_out[:, j], δx)** per layer (each neuron's value-vector change against the offset at the "
              "layer's output site; `fig_dw_out_vs_offset.png`):", "",
              "| layer | DPO mean | DPO 5/50/95 % | DPO < −0.5 | null mean | null < −0.5 |", "| ---: | ---: | --- | ---: | ---: | ---: |"]
    for layer, v in r["fig5"].items():
        dv, nv = v["dpo"], v["null"]
        if dv["n"] == 0:
            continue
        q = "/".join(f"{x:+.2f}" for x in dv["q05_q50_q95"])
        lines.append(f"| {layer} | {dv['mean']:+.3f} | {q} | {pct(dv['share_below_-0.5'])} | {nv['mean']:+.3f} | "
                     f"{pct(nv['share_below_-0.5'])} |")
    pc = r["pca"]
    lines += ["", f"**PCA** of the residual entering layer {pc['layer']} (the top neuron L{pc['layer']}.{pc['neuron']}), "
              f"{pc['tokens']} tokens of {pc['texts']} eval texts, base and DPO (`fig_pca_top_neuron.png`): the neuron's "
              f"mean activation {pc['mean_activation_base']:+.4f} (base) → {pc['mean_activation_dpo']:+.4f} (DPO); the "
              f"mean shift in (PC1, PC2) is ({pc['shift_pc1_pc2'][0]:+.2f}, {pc['shift_pc1_pc2'][1]:+.2f}).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
