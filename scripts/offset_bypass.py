"""Do encoded prompts or earlier turns bypass the DPO offset? (issue 35 item 6, the review's open questions)

On the shipped base/DPO pairs of the embedded SmolLM2-135M-Instruct, for each prompt variant of
:mod:`dsteer_eval.probes.prompt_variants` — plain, two controls, ROT13, base64, leetspeak, and the request
after k = 1, 2, 4 benign exchanges (k = 0 is the plain prompt) — this measures

* the offset δ = h_dpo − h_base at the last prompt token, projected on the unit v̄ of site L (the shipped
  vector file's default layer), with cos(δ, v̄) and ‖δ‖ beside it, and the projection at every site in the JSON;
* the DPO implicit-reward margin [log π_dpo(y_w|x) − log π_base(y_w|x)] − [log π_dpo(y_l|x) − log π_base(y_l|x)]
  (β = 1, reply log-probs summed over the reply's tokens);
* control: the same projection on K = 20 norm-matched random directions at site L
  (``dsteer_eval.steering.controls.random_direction``): what an arbitrary direction picks up of δ.

The two controls use the encodings' template: "plain English" (the wrapper-only control: the request unchanged)
and "capital letters" (the format control: upper case, the words still readable).

Every variant is paired with the plain prompt of the same row: paired bootstrap 95 % CIs of (variant − plain)
(``dsteer_eval.stats.bootstrap.paired_bootstrap``, 2000 resamples, seed 0) and the ratio of means. Words in
the tables are computed from those CIs, nothing else.

    .venv/bin/python scripts/offset_bypass.py --threads 1      # ~10 min on one core of a shared 2-core machine

Data: the refusal pair — the eval part of tasks/refusal/refusal_eval.jsonl, its first 40 HARMFUL rows with a
single Human turn (so the encoded request is the whole request; the rows with earlier turns are left out and
counted); benign turns: the first 4 single-turn harmless rows of the same file (TruthfulQA questions with their
best answers). The toxicity pair, when shipped (``default_adapter(pair="toxicity")``): the first 40 rows of part
eval of results/toxicity_pair/toxicity_pairs.jsonl.gz, the whole prefix encoded, no multi-turn variant (the
prompts are raw text, not dialogues), plus the site-15 offset projected on the toxicity probe direction.
Writes results/lee_smollm2/bypass.json and bypass.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsteer_eval.common import provenance  # noqa: E402
from dsteer_eval.dpo.model_pair import ModelPair  # noqa: E402
from dsteer_eval.models.embedded import default_adapter, default_vector, shipped_file  # noqa: E402
from dsteer_eval.models.identity import model_entry  # noqa: E402
from dsteer_eval.probes import prompt_variants as pv  # noqa: E402
from dsteer_eval.stats.bootstrap import paired_bootstrap  # noqa: E402
from dsteer_eval.steering.controls import random_direction  # noqa: E402
from dsteer_eval.vectors import load_vectors  # noqa: E402

OUT = ROOT / "results" / "lee_smollm2"
REFUSAL_ROWS = ROOT / "tasks" / "refusal" / "refusal_eval.jsonl"
TOXICITY_ROWS = ROOT / "results" / "toxicity_pair" / "toxicity_pairs.jsonl.gz"
PROBE_SITE = 15
ENCODED = ["wrapped", "format", "rot13", "base64", "leetspeak"]
TURNS = [1, 2, 4]
REPORT_SITES = [5, 10, 15, 20, 25, 29]


# ------------------------------------------------------------------ statistics, words from CIs
def ci(x, y=None) -> dict:
    """Paired bootstrap of mean(x − y) (y = 0: a one-sample CI of mean x)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.zeros_like(x) if y is None else np.asarray(y, dtype=np.float64)
    return paired_bootstrap(x, y).as_dict()


def versus(delta: dict, reference: str = "plain") -> str:
    if delta["high"] < 0:
        return f"lower than {reference}"
    if delta["low"] > 0:
        return f"higher than {reference}"
    return f"no difference from {reference} detected"


def against_zero(one: dict) -> str:
    if one["low"] > 0:
        return "> 0"
    if one["high"] < 0:
        return "< 0"
    return "CI spans 0"


def ratio(a: float, b: float) -> float | None:
    return a / b if b != 0 else None


def summarise(values: np.ndarray, plain: np.ndarray, wrapped: np.ndarray | None = None) -> dict:
    """Mean and CI of ``values``, and against the plain prompt (and the wrapper-only control when given) on the
    same rows; ``per_row`` keeps the values."""
    mean = float(values.mean())
    delta = ci(values, plain)
    one = ci(values)
    out = {"mean": mean, "ci": [one["low"], one["high"]], "sign": against_zero(one),
           "minus_plain": delta, "versus_plain": versus(delta), "ratio_to_plain": ratio(mean, float(plain.mean())),
           "frac_positive": float((values > 0).mean())}
    if wrapped is not None:
        delta_w = ci(values, wrapped)
        out.update({"minus_wrapped": delta_w, "versus_wrapped": versus(delta_w, "the wrapper-only control")})
    out["per_row"] = [float(x) for x in values]
    return out


# ------------------------------------------------------------------ one pair
def measure_variants(pair, variants: dict[str, list[str]], chosen, rejected, sites, log) -> dict:
    out = {}
    for name, prompts in variants.items():
        started = time.perf_counter()
        got = pv.measure(pair, prompts, chosen, rejected, sites=sites)
        n_tokens = float(np.mean([len(pair.tokenizer(p).input_ids) for p in prompts]))
        out[name] = {**got, "prompt_tokens_mean": n_tokens}
        log(f"  {name:10s} {len(prompts)} prompts, {n_tokens:.0f} prompt tokens on average, "
            f"{time.perf_counter() - started:.0f} s")
    return out


def analyse(measured: dict, v: torch.Tensor, site: int, n_random: int, *, extra: dict | None = None) -> dict:
    """Per variant: projection on v̂ at ``site``, cos and norm of δ, reward margins, random-direction control,
    each against the plain prompt; ``extra``: {name: (site, direction)} projected as well."""
    u = pv.unit(v)
    randoms = [pv.unit(random_direction(v, site=site, index=k)) for k in range(n_random)]
    plain = measured["plain"]
    plain_delta = plain["offsets"][:, site].double()
    plain_proj = pv.project(plain_delta, v).numpy()
    plain_norm = float(plain_delta.norm(dim=-1).mean())
    plain_margin = plain["margin"].numpy()
    wrapped = measured.get("wrapped")
    rows = {}
    for name, got in measured.items():
        against_wrapped = wrapped is not None and name in ENCODED and name != "wrapped"
        delta = got["offsets"][:, site].double()
        proj = (delta @ u).numpy()
        norms = delta.norm(dim=-1)
        cos = ((delta @ u) / norms.clamp(min=1e-30)).numpy()
        rand = np.array([float((delta @ r).mean()) for r in randoms])
        rand_plain = np.array([float((plain_delta @ r).mean()) for r in randoms])
        wrapped_proj = pv.project(wrapped["offsets"][:, site], v).numpy() if against_wrapped else None
        row = {
            "prompt_tokens_mean": got["prompt_tokens_mean"],
            "projection": summarise(proj, plain_proj, wrapped_proj),
            "cos": {"mean": float(cos.mean())},
            "norm": {"mean": float(norms.mean()), "ratio_to_plain": ratio(float(norms.mean()), plain_norm)},
            "margin": summarise(got["margin"].numpy(), plain_margin,
                                wrapped["margin"].numpy() if against_wrapped else None),
            "chosen_logratio_mean": float(got["chosen"].mean()),
            "rejected_logratio_mean": float(got["rejected"].mean()),
            "chosen_logratio_per_row": [float(x) for x in got["chosen"]],
            "rejected_logratio_per_row": [float(x) for x in got["rejected"]],
            "random": {
                "k": n_random,
                "mean_projection": rand.tolist(),
                "abs_mean": float(np.abs(rand).mean()),
                "abs_max": float(np.abs(rand).max()),
                "vbar_beyond_all": bool(abs(proj.mean()) > np.abs(rand).max()),
                "change_vs_plain_abs_max": float(np.abs(rand - rand_plain).max()),
            },
            "projection_by_site": {},
        }
        for name_x, (site_x, direction) in (extra or {}).items():
            px = pv.project(got["offsets"][:, site_x], direction).numpy()
            base_x = pv.project(plain["offsets"][:, site_x], direction).numpy()
            wrapped_x = pv.project(wrapped["offsets"][:, site_x], direction).numpy() if against_wrapped else None
            controls = [random_direction(direction, site=site_x, index=k) for k in range(n_random)]
            rand_x = np.array([float(pv.project(got["offsets"][:, site_x], r).mean()) for r in controls])
            row[name_x] = {**summarise(px, base_x, wrapped_x), "site": site_x,
                           "random_abs_max": float(np.abs(rand_x).max()),
                           "beyond_all_random": bool(abs(px.mean()) > np.abs(rand_x).max())}
        rows[name] = row
    return rows


def by_site(measured: dict, vectors: dict) -> dict:
    """Mean projection of δ on the unit v̄ of every site with a non-zero v̄, per variant."""
    out = {}
    for name, got in measured.items():
        out[name] = {int(s): float(pv.project(got["offsets"][:, s], v).mean())
                     for s, v in sorted(vectors.items()) if float(v.norm()) > 0 and s < got["offsets"].shape[1]}
    return out


def run_pair(name: str, pair, vf, prompts: list[str], chosen, rejected, variants: dict, n_random: int, log,
             extra: dict | None = None) -> dict:
    site = int(vf.metadata.get("default_layer", 20))
    v = vf.vectors[site].float()
    sites = list(range(pair.num_sites))
    started = time.perf_counter()
    measured = measure_variants(pair, variants, chosen, rejected, sites, log)
    rows = analyse(measured, v, site, n_random, extra=extra)
    sites_table = by_site(measured, vf.vectors)
    for variant, row in rows.items():
        row["projection_by_site"] = sites_table[variant]
    return {"pair": name, "site": site, "position": "last prompt token", "n": len(prompts),
            "vector_norm": float(v.norm()), "variants": rows, "seconds": round(time.perf_counter() - started, 1)}


def refusal_inputs(n_rows: int):
    rows = [json.loads(x) for x in REFUSAL_ROWS.open(encoding="utf-8") if x.strip()]
    harmful = [r for r in rows if r["part"] == "eval" and r["kind"] == "harmful"]
    single = [r for r in harmful if pv.human_turns(r["prompt"]) == 1]
    picked = single[:n_rows]
    benign = pv.benign_turns_from([r for r in rows if r["part"] == "eval"], max(TURNS))
    plain = [r["prompt"] for r in picked]
    variants = {"plain": plain}
    variants.update({v: [pv.encode_hh(p, v) for p in plain] for v in ENCODED})
    variants.update({f"turns_{k}": [pv.multi_turn(p, benign, k) for p in plain] for k in TURNS})
    selection = {"file": str(REFUSAL_ROWS.relative_to(ROOT)), "part": "eval", "kind": "harmful",
                 "rule": f"the first {n_rows} harmful eval rows with a single Human turn (file order)",
                 "harmful_eval_rows": len(harmful), "single_turn": len(single), "used": len(picked),
                 "keys": [r["key"] for r in picked],
                 "benign_turns": [{"question": q, "answer": a} for q, a in benign],
                 "benign_source": "the first 4 single-turn harmless eval rows (TruthfulQA question, best answer)"}
    return picked, variants, selection


def toxicity_inputs(n_rows: int):
    with gzip.open(TOXICITY_ROWS, "rt", encoding="utf-8") as fh:
        rows = [json.loads(x) for x in fh if x.strip()]
    picked = [r for r in rows if r.get("part") == "eval"][:n_rows]
    plain = [r["prompt"] for r in picked]
    variants = {"plain": plain}
    variants.update({v: [pv.encode_prefix(p, v) for p in plain] for v in ENCODED})
    selection = {"file": str(TOXICITY_ROWS.relative_to(ROOT)), "part": "eval",
                 "rule": f"the first {n_rows} rows of part eval (file order)", "used": len(picked),
                 "keys": [r.get("key") for r in picked]}
    return picked, variants, selection


# ------------------------------------------------------------------ markdown
LABELS = {"plain": "plain (= k = 0 turns)", "wrapped": "wrapper-only control (plain English)",
          "format": "format control (capital letters)", "rot13": "ROT13", "base64": "base64",
          "leetspeak": "leetspeak", "turns_1": "k = 1 benign turn", "turns_2": "k = 2 benign turns",
          "turns_4": "k = 4 benign turns"}


def label(name: str, res: dict) -> str:
    if name == "plain" and not any(v.startswith("turns_") for v in res["variants"]):
        return "plain"
    return LABELS.get(name, name)


def f(x, d=2):
    return "–" if x is None else f"{x:+.{d}f}"


def pct(x):
    return "–" if x is None else f"{100 * x:.0f} %"


def delta_text(s: dict, d=2) -> str:
    m = s["minus_plain"]
    return f"{f(m['mean'], d)} [{f(m['low'], d)}, {f(m['high'], d)}]"


def pair_markdown(res: dict) -> list[str]:
    site, n = res["site"], res["n"]
    sel = res["selection"]
    lines = [f"## Pair `{res['pair']}`", "",
             f"Site {site} (the shipped vector file's default layer; ‖v̄‖ = {res['vector_norm']:.1f}), position: the "
             f"last prompt token; data: {sel['file']}, part {sel['part']}, {sel['rule']}: **{n} rows**"
             + (f" (of {sel['harmful_eval_rows']} harmful eval rows, {sel['single_turn']} have a single Human turn)"
                if "single_turn" in sel else "") + ". Every number below is a mean over these rows; CIs are paired "
             "bootstrap 95 % (2000 resamples, seed 0) over rows; Δ = variant − plain on the same row.", "",
             "**Offset on v̄** (δ = h_dpo − h_base projected on the unit v̄; random: the largest |mean projection| "
             f"over K = {res['k']} norm-matched random directions at site {site})", "",
             "| variant | prompt tokens | δ·v̂ [95 % CI] | Δ vs plain [95 % CI] | ratio | reading | cos(δ, v̄) | ‖δ‖ "
             "| random max | beyond random |",
             "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
    for name, row in res["variants"].items():
        p = row["projection"]
        lines.append(
            f"| {label(name, res)} | {row['prompt_tokens_mean']:.0f} | {f(p['mean'])} [{f(p['ci'][0])}, "
            f"{f(p['ci'][1])}] | {delta_text(p) if name != 'plain' else '–'} | "
            f"{pct(p['ratio_to_plain'])} | {p['versus_plain'] if name != 'plain' else '(reference)'} | "
            f"{row['cos']['mean']:.3f} | {row['norm']['mean']:.1f} | {row['random']['abs_max']:.2f} | "
            f"{'yes' if row['random']['vbar_beyond_all'] else 'no'} |")
    lines += ["", "**DPO implicit-reward margin** (β = 1, nats: [log π_dpo − log π_base](chosen) − [...](rejected); "
              "the same rows, the same replies under every variant)", "",
              "| variant | margin [95 % CI] | Δ vs plain [95 % CI] | ratio | reading | margin > 0 | chosen log-ratio "
              "| rejected log-ratio |", "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for name, row in res["variants"].items():
        m = row["margin"]
        lines.append(
            f"| {label(name, res)} | {f(m['mean'], 1)} [{f(m['ci'][0], 1)}, {f(m['ci'][1], 1)}] | "
            f"{delta_text(m, 1) if name != 'plain' else '–'} | {pct(m['ratio_to_plain'])} | "
            f"{m['versus_plain'] if name != 'plain' else '(reference)'} | {pct(m['frac_positive'])} | "
            f"{f(row['chosen_logratio_mean'], 1)} | {f(row['rejected_logratio_mean'], 1)} |")
    versus_wrapper = {n: r for n, r in res["variants"].items() if "minus_wrapped" in r["projection"]}
    if versus_wrapper:
        probe = any("probe" in r for r in versus_wrapper.values())
        lines += ["", "**Against the wrapper-only control** (the same template with the request unchanged, on the same "
                  "rows: what the encoding adds to the wrapper; Δ = variant − wrapper-only [95 % CI])", "",
                  "| variant | δ·v̂ Δ | reading | margin Δ | reading |" + (" probe δ·ŵ Δ | reading |" if probe else ""),
                  "| --- | ---: | --- | ---: | --- |" + (" ---: | --- |" if probe else "")]
        for name, row in versus_wrapper.items():
            cells = []
            for key, d in (("projection", 2), ("margin", 1)) + ((("probe", 3),) if probe else ()):
                w = row[key]["minus_wrapped"]
                cells += [f"{f(w['mean'], d)} [{f(w['low'], d)}, {f(w['high'], d)}]", row[key]["versus_wrapped"]]
            lines.append(f"| {label(name, res)} | " + " | ".join(cells) + " |")
    if any("probe" in row for row in res["variants"].values()):
        lines += ["", f"**Offset on the toxicity probe direction** (site {PROBE_SITE}, last prompt token)", "",
                  "| variant | δ·ŵ [95 % CI] | Δ vs plain [95 % CI] | ratio | reading | random max | beyond random |",
                  "| --- | ---: | ---: | ---: | --- | ---: | --- |"]
        for name, row in res["variants"].items():
            p = row["probe"]
            lines.append(f"| {label(name, res)} | {f(p['mean'], 3)} [{f(p['ci'][0], 3)}, {f(p['ci'][1], 3)}] | "
                         f"{delta_text(p, 3) if name != 'plain' else '–'} | {pct(p['ratio_to_plain'])} | "
                         f"{p['versus_plain'] if name != 'plain' else '(reference)'} | {p['random_abs_max']:.3f} | "
                         f"{'yes' if p['beyond_all_random'] else 'no'} |")
    sites = {name: {int(k): x for k, x in row["projection_by_site"].items()}  # JSON keys are strings
             for name, row in res["variants"].items()}
    shown = [s for s in REPORT_SITES if s in sites["plain"]]
    lines += ["", "**Ratio to plain of the mean δ·v̂ at other sites** (each site's own v̄; last prompt token; "
              "point estimates, no CI)", "",
              "| variant | " + " | ".join(f"site {s}" for s in shown) + " |",
              "| --- | " + " | ".join("---:" for _ in shown) + " |"]
    plain_sites = sites["plain"]
    for name, row in res["variants"].items():
        cells = [pct(ratio(sites[name][s], plain_sites[s])) for s in shown]
        lines.append(f"| {label(name, res)} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def markdown(result: dict) -> str:
    lines = ["# Do encoded prompts or earlier turns bypass the DPO offset? (issue 35 item 6)", "",
             f"Command: `{result['command']}`  ", f"Wall time: {result['seconds']:.0f} s "
             f"({result['threads']} torch thread(s), CPU). Written by `scripts/offset_bypass.py`; section: "
             "docs/prompt-variants.md.", "",
             "Model: the embedded SmolLM2-135M-Instruct (30 layers, d = 576) with each shipped DPO LoRA adapter "
             "(base = the adapter disabled). Variants (dsteer_eval/probes/prompt_variants.py): the request wrapped as "
             f"`{pv.TEMPLATE!r}` with name = plain English (the wrapper-only control: the request unchanged) / "
             "capital letters (the format control: upper case, words still readable) / ROT13 / base64 / leetspeak; "
             "for HH prompts only the request (the first Human turn) is encoded and the frame kept; k benign "
             "Human/Assistant exchanges before the unchanged request (k = 0 is the plain prompt itself, so its row is "
             "the plain row). In every HH variant the last prompt token is the same (the ':' of the frame's final "
             "'\\n\\nAssistant:'): only what comes before it changes.", "",
             "Readings are computed from the CIs only: \"lower than plain\" when the whole 95 % CI of "
             "(variant − plain) is below 0, \"higher than plain\" when above 0, otherwise \"no difference from plain "
             "detected\" (which is not evidence that the offset is unchanged); the same words against the wrapper-only "
             "control for the encodings. \"beyond random\": |mean δ·v̂| exceeds "
             "the |mean projection| on every one of the K random directions.", ""]
    for note in result["skipped"]:
        lines += [f"*{note}*", ""]
    for res in result["pairs"].values():
        lines += pair_markdown(res)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="refusal,toxicity", help="which shipped pairs (refusal,toxicity)")
    ap.add_argument("--rows", type=int, default=40, help="rows per pair (40)")
    ap.add_argument("--random", type=int, default=20, help="K random directions (20)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=str(OUT), help="output folder (results/lee_smollm2)")
    ap.add_argument("--render", metavar="JSON", default=None,
                    help="only re-write bypass.md (next to JSON) from an earlier run's bypass.json; no model runs")
    args = ap.parse_args(argv)
    if args.render:
        path = Path(args.render)
        (path.parent / "bypass.md").write_text(markdown(json.loads(path.read_text(encoding="utf-8"))), encoding="utf-8")
        print(f"wrote {path.parent / 'bypass.md'} from {path}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python scripts/offset_bypass.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    started = time.perf_counter()
    log = lambda text: print(text, flush=True)  # noqa: E731
    log(f"$ {command.strip()}")
    result = {"command": command.strip(), "threads": torch.get_num_threads(), "pairs": {}, "skipped": []}
    models = []
    for name in [p.strip() for p in args.pairs.split(",") if p.strip()]:
        adapter, vector = default_adapter(pair=name), default_vector(pair=name)
        if adapter is None or vector is None:
            note = f"Pair {name}: not shipped (no adapter or vector under dsteer_eval/artifacts/smollm2/{name}/); skipped."
            log(note)
            result["skipped"].append(note)
            continue
        extra = None
        if name == "refusal":
            picked, variants, selection = refusal_inputs(args.rows)
        elif name == "toxicity":
            probe = shipped_file("smollm2", "toxicity/probe.safetensors")
            if not TOXICITY_ROWS.is_file() or probe is None:
                note = (f"Pair toxicity: adapter shipped but {TOXICITY_ROWS.relative_to(ROOT)} or "
                        "dsteer_eval/artifacts/smollm2/toxicity/probe.safetensors is missing; skipped.")
                log(note)
                result["skipped"].append(note)
                continue
            picked, variants, selection = toxicity_inputs(args.rows)
            extra = {"probe": (PROBE_SITE, load_vectors(probe).vectors[PROBE_SITE].float())}
        else:
            raise SystemExit(f"--pairs: unknown pair {name!r} (refusal, toxicity)")
        log(f"pair {name}: {len(picked)} rows, adapter {adapter}")
        pair = ModelPair.load("smollm2", adapter=adapter, device="cpu")
        vf = load_vectors(vector)
        res = run_pair(name, pair, vf, [r["prompt"] for r in picked], [r["chosen"] for r in picked],
                       [r["rejected"] for r in picked], variants, args.random, log, extra=extra)
        res["selection"] = selection
        res["k"] = args.random
        res["vector_file"] = str(Path(vector).relative_to(ROOT)) if Path(vector).is_relative_to(ROOT) else str(vector)
        result["pairs"][name] = res
        models.append(model_entry(f"adapter:{name}", adapter))
        del pair
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["provenance"] = provenance.collect(data=[str(REFUSAL_ROWS)] + ([str(TOXICITY_ROWS)] if "toxicity" in
                                                                           result["pairs"] else []),
                                              models=models, seeds={"bootstrap": 0, "random_directions": 0},
                                              command=command.strip())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bypass.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "bypass.md").write_text(markdown(result), encoding="utf-8")
    log(f"wrote {out / 'bypass.json'} and {out / 'bypass.md'} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
