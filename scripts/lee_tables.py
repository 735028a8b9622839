"""Lee et al.'s Table 2 and Table 4 on the embedded model, beside D-STEER's ±v̄, from the toxicity pair's sweeps
(scripts/toxicity_pipeline.sh steps sweep, table2, table4; perplexity from results/toxicity_pair/sweep_ppl). Writes results/lee_smollm2/tables.{json,md}.

    .venv/bin/python scripts/lee_tables.py

Data: the eval part of the offline RTP prompts (dsteer_toxicity_rtp: 20 greedy tokens, offline alt-profanity-check,
degenerate continuations counted and never scored) and the first documents of the held-out HH dialogues
(dsteer_perplexity_hh), the same documents at every point (Tables 2 and 4: the first 64 of each, paired with the main sweep's base and DPO
points on the same document ids). Toxicity is the mean per-prompt score; perplexity is
the corpus word perplexity and, per document, bits per byte (what the paired CIs use).

Table 2 (subtract a direction from the base model): for each direction, the alpha of its grid whose mean bits per
byte is nearest the DPO model's (the paper matched alpha on perplexity); at that alpha, the fraction of the
base → DPO toxicity gap it closes (paired bootstrap CI) and its rank by distance to DPO (|1 − f|) among K random
directions of the same norm at the same alpha. Table 4 (un-align the DPO model): the keys of the top 7 toxic
neurons × 10 inside lm-eval; the fraction of the gap taken back (DPO → base); its control population (20 random sets
of 7 neurons × 10) is scripts/lee_unalign.py's, where every arm runs through one code path; −v̄ on the DPO model
beside it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsteer_eval.stats.gap import gap_closure  # noqa: E402
from dsteer_eval.stats.gap_verdicts import rank_by_distance  # noqa: E402

PAIR = ROOT / "results" / "toxicity_pair"
OUT = ROOT / "results" / "lee_smollm2"
TOX, PPL = "dsteer_toxicity_rtp", "dsteer_perplexity_hh"
DIRECTIONS = {  # sweep folder -> what it subtracts
    "probe_final": "the toxicity probe (site 30) through the final norm, at site 29",
    "value_top1": "the top toxic value vector, at site 29",
    "svd_u0": "SVD.U[0] of the top-128 toxic value vectors, at site 29",
    "probe_build": "the site-15 probe that built the rejected continuations, at site 15",
}


def per_doc(sweep: Path, point: str, task: str, metric: str) -> dict[int, float]:
    found = json.loads((sweep / "points" / point / task / "per_doc.json").read_text())["tasks"][task]
    return {d: v for d, v in zip(found["doc_id"], found["metrics"].get(metric, [])) if v is not None
            and np.isfinite(v)}


def corpus(sweep: Path, point: str, task: str, metric: str) -> float | None:
    files = sorted((sweep / "points" / point / task).glob("results_*.json"))
    if not files:
        return None
    found = json.loads(files[-1].read_text())["results"][task]
    value = next((v for k, v in found.items() if k.split(",")[0] == metric and not k.endswith("_stderr")), None)
    return None if value is None else float(value)


def paired(*maps: dict[int, float]):
    docs = sorted(set.intersection(*(set(m) for m in maps)))
    return docs, [np.array([m[d] for d in docs]) for m in maps]


def points(sweep: Path) -> list[dict]:
    return json.loads((sweep / "sweep.json").read_text())["points"]


def closure(moved: dict, start: dict, target: dict) -> dict:
    docs, (m, s, t) = paired(moved, start, target)
    g = gap_closure(m, s, t)
    return {"n": len(docs), "fraction": g.fraction, "low": g.low, "high": g.high,
            "gap": g.gap.as_dict(), "moved": g.moved.as_dict()}


# A grid point (or a random direction) is usable when at least this share of the base's scored prompts still give a
# non-degenerate continuation: beyond it the model has collapsed, and a toxicity over the few survivors says nothing.
USABLE = 0.8


def table2(dpo_tox, base_tox, dpo_bpb, base_bpb) -> dict:
    rows = {}
    need = USABLE * len(base_tox)
    target_bpb = float(np.mean(list(dpo_bpb.values())))
    for name, what in DIRECTIONS.items():
        sweep = PAIR / "interventions" / name
        if not (sweep / "sweep.json").is_file():
            rows[name] = {"what": what, "missing": str(sweep.relative_to(ROOT))}
            continue
        steered = [p for p in points(sweep) if p["control"] is None and p["layer"] is not None]
        grid = []
        for p in steered:
            bpb = per_doc(sweep, p["name"], PPL, "doc_bits_per_byte")
            tox = per_doc(sweep, p["name"], TOX, "toxicity")
            grid.append({"alpha": p["alpha"], "point": p["name"], "bits_per_byte": float(np.mean(list(bpb.values()))),
                         "word_perplexity": corpus(sweep, p["name"], PPL, "word_perplexity"),
                         "toxicity": float(np.mean(list(tox.values()))) if tox else None, "n_scored": len(tox),
                         "usable": len(tox) >= need,
                         "n_degenerate": corpus(sweep, p["name"], TOX, "n_degenerate")})
        chosen = min((g for g in grid if g["usable"]), key=lambda g: abs(g["bits_per_byte"] - target_bpb))
        moved = per_doc(sweep, chosen["point"], TOX, "toxicity")
        row = {"what": what, "grid": grid, "alpha": chosen["alpha"], "matched": chosen, "usable_share": USABLE,
               "collapsed_alphas": [g["alpha"] for g in grid if not g["usable"]],
               "closure": closure(moved, base_tox, dpo_tox), "target_bits_per_byte": target_bpb,
               # matched when the chosen point's bits per byte is within 5 % of the DPO model's
               "perplexity_matched": abs(chosen["bits_per_byte"] - target_bpb) <= 0.05 * target_bpb}
        matched = PAIR / "interventions" / f"{name}_matched"  # the K random directions at the matched alpha
        controls = [p for p in points(matched) if p["control"] is not None and p["alpha"] == chosen["alpha"]] \
            if (matched / "sweep.json").is_file() else []
        scored = [per_doc(matched, p["name"], TOX, "toxicity") for p in controls]
        fractions = [closure(d, base_tox, dpo_tox)["fraction"] for d in scored if len(d) >= need]
        fractions = [f for f in fractions if f is not None]
        row["random_collapsed"] = sum(len(d) < need for d in scored)
        if fractions and row["closure"]["fraction"] is not None:
            row["random"] = {"fractions": fractions,
                             "rank": rank_by_distance(row["closure"]["fraction"], fractions).as_dict()}
        rows[name] = row
    return rows


def table4(dpo_tox, base_tox) -> dict:
    folder = PAIR / "unalign"
    keys = folder / "keys_top7"
    if not (keys / "sweep.json").is_file():
        return {"missing": str(keys.relative_to(ROOT))}
    moved = per_doc(keys, "unsteered", TOX, "toxicity")
    row = {"closure": closure(moved, dpo_tox, base_tox), "toxicity": float(np.mean(list(moved.values()))),
           "word_perplexity": corpus(keys, "unsteered", PPL, "word_perplexity"),
           "n_degenerate": corpus(keys, "unsteered", TOX, "n_degenerate")}
    unalign = OUT / "unalign.json"  # the random 7-neuron sets, run with the top 7 in one process (lee_unalign.py)
    if unalign.is_file():
        found = json.loads(unalign.read_text())
        row["control_population"] = {"file": str(unalign.relative_to(ROOT)), "top7": found["arms"]["top7"]["fraction"],
                                     "random": [a["fraction"] for k, a in found["arms"].items() if k != "top7"],
                                     "rank": found.get("rank")}
    return row


def alpha_for(name: str) -> float:
    """The alpha of direction ``name``'s grid whose mean bits per byte is nearest the DPO model's, among the usable
    points (``USABLE``)."""
    target = float(np.mean(list(per_doc(PAIR / "sweep_ppl", "unsteered", PPL, "doc_bits_per_byte").values())))
    sweep = PAIR / "interventions" / name
    need = USABLE * len(per_doc(PAIR / "sweep", "base", TOX, "toxicity"))
    grid = [(p["alpha"], float(np.mean(list(per_doc(sweep, p["name"], PPL, "doc_bits_per_byte").values()))))
            for p in points(sweep) if p["control"] is None and p["layer"] is not None
            and len(per_doc(sweep, p["name"], TOX, "toxicity")) >= need]
    return min(grid, key=lambda g: abs(g[1] - target))[0]


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--alpha-for":
        print(f"{alpha_for(sys.argv[2]):g}")
        return
    main_sweep, ppl_sweep = PAIR / "sweep", PAIR / "sweep_ppl"
    dpo_tox = per_doc(main_sweep, "unsteered", TOX, "toxicity")
    base_tox = per_doc(main_sweep, "base", TOX, "toxicity")
    dpo_bpb = per_doc(ppl_sweep, "unsteered", PPL, "doc_bits_per_byte")
    base_bpb = per_doc(ppl_sweep, "base", PPL, "doc_bits_per_byte")
    dsteer = {}
    for name, start, target, label in (("L20_a-1", dpo_tox, base_tox, "−v̄ on the DPO model (takes back)"),
                                       ("base_L20_a1", base_tox, dpo_tox, "+v̄ on the base (installs)")):
        moved = per_doc(main_sweep, name, TOX, "toxicity")
        dsteer[name] = {"what": label, "closure": closure(moved, start, target),
                        "toxicity": float(np.mean(list(moved.values()))),
                        "word_perplexity": corpus(ppl_sweep, name, PPL, "word_perplexity")}
    result = {
        "base": {"toxicity": float(np.mean(list(base_tox.values()))), "bits_per_byte": float(np.mean(list(base_bpb.values()))),
                 "word_perplexity": corpus(ppl_sweep, "base", PPL, "word_perplexity"),
                 "n_degenerate": corpus(main_sweep, "base", TOX, "n_degenerate")},
        "dpo": {"toxicity": float(np.mean(list(dpo_tox.values()))), "bits_per_byte": float(np.mean(list(dpo_bpb.values()))),
                "word_perplexity": corpus(ppl_sweep, "unsteered", PPL, "word_perplexity"),
                "n_degenerate": corpus(main_sweep, "unsteered", TOX, "n_degenerate")},
        "dpo_vs_base": closure(dpo_tox, base_tox, dpo_tox)["gap"],
        "dsteer": dsteer, "table2": table2(dpo_tox, base_tox, dpo_bpb, base_bpb), "table4": table4(dpo_tox, base_tox),
    }
    result["grid_lines"] = [f"{name}: " + ", ".join(
        f"α {g['alpha']:g}: " + (f"toxicity {g['toxicity']:.3f}" if g["toxicity"] is not None else "no toxicity")
        + f" on {g['n_scored']} prompts{'' if g['usable'] else ' (collapsed)'}, word ppl {g['word_perplexity']:.1f}"
        for g in row["grid"])
                            for name, row in result["table2"].items() if "grid" in row]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "tables.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    (OUT / "tables.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


def frac(c: dict) -> str:
    if c["fraction"] is None:
        return "— (no gap)"
    return f"{100 * c['fraction']:.0f} % [{100 * c['low']:.0f}, {100 * c['high']:.0f}]"


def ranked(row: dict) -> str:
    r = row.get("random")
    if not r:
        return "—"
    k = r["rank"]
    gone = row.get("random_collapsed", 0)
    return (f"{min(r['fractions']) * 100:.0f} … {max(r['fractions']) * 100:.0f} %; rank {k['label']} "
            f"by distance to the target, p = {k['p_value']:.3f}{' (underpowered: K < 19)' if k['underpowered'] else ''}"
            + (f"; {gone} random direction(s) collapsed the model and are left out" if gone else ""))


def markdown(r: dict) -> str:
    b, d, g = r["base"], r["dpo"], r["dpo_vs_base"]
    fmt = lambda x, p=1: "—" if x is None else f"{x:.{p}f}"  # noqa: E731
    lines = [
        "# Lee et al.'s Table 2 and Table 4 on SmolLM2 (toxicity pair)", "",
        "Toxicity: `dsteer_toxicity_rtp` (eval part of the offline RTP prompts, 20 greedy tokens, offline "
        "alt-profanity-check; not Perspective). Perplexity: `dsteer_perplexity_hh` (held-out HH dialogues; not "
        "Wikitext-2). Written by `scripts/lee_tables.py` from `results/toxicity_pair/`.", "",
        f"Base: toxicity {b['toxicity']:.3f}, word perplexity {fmt(b['word_perplexity'])}; DPO: toxicity "
        f"{d['toxicity']:.3f}, word perplexity {fmt(d['word_perplexity'])}; DPO − base toxicity {g['mean']:+.3f} "
        f"[{g['low']:+.3f}, {g['high']:+.3f}] (paired, n = {g['n']}).", "",
        "## Table 2: subtracting a direction from the base model (alpha matched on perplexity)", "",
        "| intervention | alpha | toxicity | word ppl | degenerate | share of the base → DPO drop | K random directions, same alpha |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| base | 0 | {b['toxicity']:.3f} | {fmt(b['word_perplexity'])} | {fmt(b['n_degenerate'], 0)} | 0 | |",
        f"| DPO | — | {d['toxicity']:.3f} | {fmt(d['word_perplexity'])} | {fmt(d['n_degenerate'], 0)} | 100 % | |"]
    for name, row in r["table2"].items():
        if "missing" in row:
            lines.append(f"| {row['what']} | not run (`{row['missing']}`) | | | | | |")
            continue
        m = row["matched"]
        flag = "" if row["perplexity_matched"] else " (perplexity not matched within 5 %: the nearest usable grid point)"
        lines.append(f"| {row['what']} | {row['alpha']:g}{flag} | {m['toxicity']:.3f} | {fmt(m['word_perplexity'])} | "
                     f"{fmt(m['n_degenerate'], 0)} | {frac(row['closure'])} | {ranked(row)} |")
    ds = r["dsteer"]
    lines.append(f"| +v̄ on the base (D-STEER, layer 20, alpha +1) | 1 | {ds['base_L20_a1']['toxicity']:.3f} | "
                 f"{fmt(ds['base_L20_a1']['word_perplexity'])} | | {frac(ds['base_L20_a1']['closure'])} | see the report |")
    lines += ["", "α is chosen among the usable grid points: those where at least 80 % of the base's scored prompts still give "
              "a non-degenerate continuation (a toxicity over the few survivors of a collapsed model says nothing). "
              "Every grid point (unit=norm: α is a fraction of the mean state norm at the site):", "",
              *[f"* {x}" for x in r.get("grid_lines", [])]]
    t4 = r["table4"]
    lines += ["", "## Table 4: un-aligning the DPO model", "",
              "| intervention | toxicity | word ppl | degenerate | share of the DPO drop taken back | K random sets of 7 neurons × 10 |",
              "| --- | ---: | ---: | ---: | ---: | --- |",
              f"| DPO | {d['toxicity']:.3f} | {fmt(d['word_perplexity'])} | {fmt(d['n_degenerate'], 0)} | 0 | |"]
    if "missing" in t4:
        lines.append(f"| keys of the top 7 toxic neurons × 10 | not run (`{t4['missing']}`) | | | | |")
    else:
        cp = t4.get("control_population")
        control = "—" if not cp else (
            f"in `{cp['file']}` (all arms one code path): top 7 {100 * cp['top7']:.0f} %, random "
            f"{100 * min(cp['random']):.0f} … {100 * max(cp['random']):.0f} %; rank {cp['rank']['label']}, "
            f"p = {cp['rank']['p_value']:.3f}")
        lines.append(f"| keys of the top 7 toxic neurons × 10 | {t4['toxicity']:.3f} | {fmt(t4['word_perplexity'])} | "
                     f"{fmt(t4['n_degenerate'], 0)} | {frac(t4['closure'])} | {control} |")
    lines.append(f"| −v̄ (D-STEER, layer 20, alpha −1) | {ds['L20_a-1']['toxicity']:.3f} | "
                 f"{fmt(ds['L20_a-1']['word_perplexity'])} | | {frac(ds['L20_a-1']['closure'])} | see the report |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
