"""How much of DPO can one vector do? (issue 36) v̄ beside the distilled v* / u* and the DPO-trained v_DPO, per layer,
on a shipped pair, each against K random directions of its own norm. Writes results/best_vector/<pair>/:
vectors/*.safetensors (fitted, with provenance; loadable by steered), table.json and table.md.

    .venv/bin/python scripts/best_vector.py --pair refusal --layers 10,20,25

Fitting (dsteer-eval extract, resumable): v* = distill install (min KL(DPO || base + v)) and u* = distill undo
(min KL(base || DPO + u)) on the pair's vector part — the rows v̄ comes from; v_DPO = the DPO loss with the base + v as
the policy and the base as the reference, on the train part (the adapter's rows). Position: all.

Measuring (dsteer_eval.dpo.vector_fit.measure), on the first --rows pairs of the eval part (never fitted on) and, to
show overfitting, on as many rows of the part each vector was fitted on:
* install, on the base: +v̄, +v*, −u*, +v_DPO; undo, on the DPO model: −v̄, +u*, −v*, −v_DPO;
* share of the gap: the implicit reward margin relative to the base, m = [log π(c) − log π_base(c)] − [...](r) over
  the reply tokens, moved / DPO's, with a paired bootstrap CI (install: toward DPO's margin from 0; undo: from DPO's
  back toward 0);
* KL explained: 1 − KL(target || steered) / KL(target || start), reply tokens, mean over pairs;
* K random directions, each scaled to the vector's norm, on the same side: the vector's rank by distance of its
  share to 100 % (an overshoot is not more), p = rank / (K + 1).
Verdict words are computed from these numbers (see verdict()).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsteer_eval.data.preference_pairs import load_pairs  # noqa: E402
from dsteer_eval.dpo.model_pair import ModelPair  # noqa: E402
from dsteer_eval.dpo.vector_fit import measure  # noqa: E402
from dsteer_eval.models.embedded import default_adapter, default_vector  # noqa: E402
from dsteer_eval.stats.gap import gap_closure  # noqa: E402
from dsteer_eval.stats.gap_verdicts import rank_by_distance  # noqa: E402
from dsteer_eval.vectors import load_vectors  # noqa: E402

DATA = {"refusal": ROOT / "build" / "refusal" / "refusal_pairs.jsonl.gz",
        "toxicity": ROOT / "results" / "toxicity_pair" / "toxicity_pairs.jsonl.gz",
        "hh": ROOT.parent / "shared" / "data" / "hh_harmless_dev.jsonl.gz"}
FITS = {"distill_install": ("distill", "install", "vector"), "distill_undo": ("distill", "undo", "vector"),
        "dpo_vector": ("dpo-vector", "install", "train")}
# how the fitted vectors were fitted: a table measured with another rule is not reused (extract's defaults)
FIT_RULE = "guarded: a quarter of the fit pairs pick the iterate (w = 0 included); an overshoot halves the step"
# (label, side the vector is added to, estimator, sign)
ARMS = [("+v̄", "base", "vbar", 1), ("+v*", "base", "distill_install", 1), ("−u*", "base", "distill_undo", -1),
        ("+v_DPO", "base", "dpo_vector", 1),
        ("−v̄", "dpo", "vbar", -1), ("+u*", "dpo", "distill_undo", 1), ("−v*", "dpo", "distill_install", -1),
        ("−v_DPO", "dpo", "dpo_vector", -1)]


def fit(pair: str, adapter: Path, layers: list[int], steps: int, out: Path, fit_rows: int, limits: dict,
        null: bool = False, train_rows: int | None = None) -> dict:
    """{estimator: {layer: file}}: one vector file per estimator and layer (fitted once, kept; a killed fit resumes).
    ``null``: v_DPO, which never sees the adapter, is fitted on the null run's data (--labels shuffled, its seed).
    ``train_rows``: the rows v_DPO is fitted on (of the train part), when not ``fit_rows``."""
    labels = []
    if null:
        seed = json.loads((adapter / "dpo_card.json").read_text())["hyperparameters"]["seed"]
        labels = ["--labels", "shuffled", "--label-seed", str(seed)]
    files = {}
    for name, (method, direction, part) in FITS.items():
        files[name] = {}
        for layer in layers:
            path = out / "vectors" / f"{name}_site{layer}.safetensors"
            files[name][layer] = path
            if path.is_file() and guarded(path, layer):
                continue  # fitted before with this rule (a file from the unguarded fit is fitted again)
            run([str(ROOT / ".venv" / "bin" / "dsteer-eval"), "extract", "--method", method, "--direction", direction,
                 "--peft", str(adapter), "--data", str(DATA[pair]), "--part", part, "--layers", str(layer), "--steps",
                 str(steps), "--batch-size", "8", "--limit",
                 str(train_rows if part == "train" and train_rows is not None else fit_rows), "--max-prompt-tokens",
                 str(limits["max_prompt"]), "--max-completion-tokens", str(limits["max_completion"]),
                 *(labels if method == "dpo-vector" else []), "--out", str(path)])
    return files


def guarded(path: Path, layer: int) -> bool:
    """Whether the vector file's fit record shows check pairs (the guarded fit, FIT_RULE)."""
    record = json.loads(load_vectors(str(path)).metadata.get("fit", "{}")).get(str(layer), {})
    return bool(record.get("check_pairs"))


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def null_adapter(pair: str) -> Path:
    """The null DPO run of ``pair`` (build/null_adapters/<pair>): the shipped adapter's own train-dpo command on the
    same data with ``--labels shuffled`` — chosen and rejected swapped on a seeded half of the train pairs, so there is
    no consistent preference to learn. Trained here when missing (train-dpo keeps checkpoints: a killed run resumes)."""
    out = ROOT / "build" / "null_adapters" / pair
    if (out / "adapter_config.json").is_file():
        return out
    card = json.loads((default_adapter(pair=pair) / "dpo_card.json").read_text())
    argv = shlex.split(card["command"])[2:]
    for flag, value in (("--data", str(DATA[pair])), ("--out", str(out))):
        argv[argv.index(flag) + 1] = value
    run([str(ROOT / ".venv" / "bin" / "dsteer-eval"), "train-dpo", *argv, "--labels", "shuffled", "--resume"])
    return out


def null_vbar(pair: str, adapter: Path, out: Path) -> Path:
    """v̄ of the null pair: the shipped vector's own extract command with the null adapter."""
    path = out / "vectors" / "vbar.safetensors"
    if not path.is_file():
        run([str(ROOT / ".venv" / "bin" / "dsteer-eval"), "extract", "--method", "dpo-diff", "--peft", str(adapter),
             "--data", str(DATA[pair]), "--part", "vector", "--default-layer", "20", "--out", str(path)])
    return path


def kl_explained(after: np.ndarray, before: np.ndarray, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(after), size=(2000, len(after)))
    boots = 1 - after[idx].mean(1) / before[idx].mean(1)
    return {"value": float(1 - after.mean() / before.mean()), "low": float(np.quantile(boots, 0.025)),
            "high": float(np.quantile(boots, 0.975))}


def share(margin: np.ndarray, dpo: np.ndarray, side: str) -> dict:
    zero = np.zeros_like(dpo)
    g = gap_closure(margin, zero, dpo) if side == "base" else gap_closure(margin, dpo, zero)
    return {"fraction": g.fraction, "low": g.low, "high": g.high, "gap_shown": g.gap_shown}


def evaluate(pair_obj, rows, layer: int, vectors: dict, k: int, seed: int, limits: dict) -> dict:
    d = next(iter(vectors.values())).shape[0]
    gen = torch.Generator().manual_seed(seed + layer)
    randoms = [r / r.norm() for r in torch.randn(k, d, generator=gen)]
    arms = {}
    for label, side, est, sign in ARMS:
        v = vectors[est]
        arms[label] = (side, sign * v)
        for i, r in enumerate(randoms):
            arms[f"{label}|random{i}"] = (side, r * v.norm())
    m = measure(pair_obj, rows, layer, arms, limits=limits)
    dpo = m.margin_dpo.double().numpy()
    out = {"n": len(rows), "dpo_margin": float(dpo.mean()), "kl_dpo_base": float(m.kl_dpo_base.mean()),
           "kl_base_dpo": float(m.kl_base_dpo.mean()), "arms": {}}
    for label, side, est, _ in ARMS:
        got = m.steered[label]
        before = (m.kl_dpo_base if side == "base" else m.kl_base_dpo).double().numpy()
        s = share(got["margin"].double().numpy(), dpo, side)
        rand = [share(m.steered[f"{label}|random{i}"]["margin"].double().numpy(), dpo, side)["fraction"]
                for i in range(k)]
        rand_kl = [kl_explained(m.steered[f"{label}|random{i}"]["kl_to_target"].double().numpy(), before)["value"]
                   for i in range(k)]
        rank = rank_by_distance(s["fraction"], rand).as_dict() if s["fraction"] is not None and rand else None
        out["arms"][label] = {"side": side, "estimator": est, "norm": float(vectors[est].norm()), "share": s,
                              "kl_explained": kl_explained(got["kl_to_target"].double().numpy(), before),
                              "random_share": [min(rand), max(rand)] if rand else None,
                              "random_kl_explained": [min(rand_kl), max(rand_kl)] if rand_kl else None,
                              "rank": rank}
    return out


def fit_summary(path: Path, layer: int) -> dict:
    """From a fitted vector file's record: the kept step, the halvings, the check pairs and their loss at w = 0 and
    at the kept iterate (the guarded fit's own held-out reading)."""
    r = json.loads(load_vectors(str(path)).metadata["fit"])[str(layer)]
    checks = dict(r.get("check_losses") or [])
    return {"steps": r["steps"], "rows": r["rows"], "check_pairs": r.get("check_pairs"), "best_step": r.get("best_step"),
            "halvings": r.get("halvings"), "check_loss_zero": checks.get(0), "check_loss_kept": checks.get(r.get("best_step")),
            "train_loss_first": r["first_loss"], "train_loss_last": r["final_loss"]}


def fit_line(fits: dict) -> str:
    names = {"distill_install": "v*", "distill_undo": "u*", "dpo_vector": "v_DPO"}
    return "Fits (each on its part's first fit rows, a quarter of them kept out as check pairs): " + "; ".join(
        f"{names[n]} on {f['rows']} pairs kept step {f['best_step']} of {f['steps']} ({f['halvings']} halvings; check-pair loss "
        f"{f['check_loss_zero']:.4f} at v = 0 → {f['check_loss_kept']:.4f})" for n, f in fits.items()) + "."


def cosines(vectors: dict) -> dict:
    def c(a, b):
        return float(torch.nn.functional.cosine_similarity(a, b, dim=0))

    v = vectors
    return {"cos(v*, v̄)": c(v["distill_install"], v["vbar"]), "cos(u*, −v̄)": c(v["distill_undo"], -v["vbar"]),
            "cos(u*, −v*)": c(v["distill_undo"], -v["distill_install"]),
            "cos(v_DPO, v̄)": c(v["dpo_vector"], v["vbar"]), "cos(v_DPO, v*)": c(v["dpo_vector"], v["distill_install"])}


def verdict(arm: dict) -> str:
    """Words from numbers (the share's 95 % CI and the rank among the arm's random directions):
    'does it' — the CI lies within [80 %, 120 %] and the arm is nearest 100 % of all K + 1 at p <= 0.05;
    'overshoot' — the CI lies above 100 % (and not within [80, 120] %); 'part' — the CI lies above 0 (otherwise); 'wrong way' — below 0;
    'not shown' — the CI holds 0. '(not beyond random)' is added when the rank test fails, '(no random directions)'
    where none were run on these rows; 'no gap shown' where DPO's margin itself has a CI holding 0."""
    s, rank = arm["share"], arm["rank"]
    if s["fraction"] is None or s["low"] is None or not s["gap_shown"]:
        return "no gap shown"  # DPO's own margin is not told apart from 0 (the null run): no share of it means anything
    first = rank is not None and rank["rank"] == 1 and rank["p_value"] <= 0.05
    note = "" if first else (" (no random directions)" if rank is None else " (not beyond random)")
    if 0.8 <= s["low"] and s["high"] <= 1.2:
        return "does it" + note if not first else "does it"
    if s["low"] > 1:
        return "overshoot" + note
    if s["low"] > 0:
        return "part" + note
    if s["high"] < 0:
        return "wrong way" + note
    return "not shown"


def pct(x) -> str:
    return "—" if x is None else f"{100 * x:.0f} %"


def span(pair) -> str:
    return "not run" if not pair else f"{pct(pair[0])} … {pct(pair[1])}"


def control_of(out: Path) -> dict | None:
    """The null run's table beside a pair's table (``<pair>/null/table.json``), if measured."""
    path = out / "null" / "table.json"
    null = json.loads(path.read_text()) if path.is_file() else None
    own = json.loads((out / "table.json").read_text()) if (out / "table.json").is_file() else {}
    return null if null and null.get("fit_rule") == own.get("fit_rule") else None  # fitted alike, or not compared


def null_comparison(r: dict, null: dict) -> list[str]:
    """Each arm's eval-part KL explained with the shipped adapter beside the same estimator's against the null DPO run
    (no consistent preference): 'above the null' when the CIs do not overlap and the real one is higher."""
    lines = ["## Against the null DPO run", "",
             f"The null DPO run (`{null['null_adapter']['command']}`): the same recipe on the same "
             f"pairs with chosen and rejected swapped on a seeded half of the train pairs "
             f"({null['null_adapter']['labels']['swapped']} swapped), so there is no consistent preference to find. "
             "Its held-out reward accuracy: "
             f"{null['null_adapter']['heldout']['reward_accuracy']:.3f} (0.5 = none learned). Every estimator was "
             "fitted and measured against it exactly as against the shipped adapter (`--control null`); its table is "
             "[null/table.md](null/table.md). What a fitted vector explains of a DPO run that learned nothing is the "
             "floor its figure on the real pair is read against.", ""]
    for layer, res in r["layers"].items():
        if layer not in null["layers"]:
            continue
        e, n = res["eval"], null["layers"][layer]["eval"]
        lines += [f"**Site {layer}**, eval part ({e['n']} pairs): KL(DPO‖base) {e['kl_dpo_base']:.4f} shipped, "
                  f"{n['kl_dpo_base']:.4f} null; DPO margin {e['dpo_margin']:+.2f} shipped, {n['dpo_margin']:+.2f} "
                  "null.", "",
                  "| arm | KL explained, shipped [95 % CI] | KL explained, null [95 % CI] | share of the gap, shipped | "
                  "share of the gap, null | reading |", "| --- | --- | --- | --- | --- | --- |"]
        for label, a in e["arms"].items():
            b = n["arms"][label]
            ka, kb = a["kl_explained"], b["kl_explained"]
            word = ("above the null" if ka["low"] > kb["high"] else "below the null" if ka["high"] < kb["low"]
                    else "not told apart from the null")
            null_share = pct(b["share"]["fraction"]) if b["share"]["gap_shown"] else "no gap shown"
            lines.append(f"| {label} | {pct(ka['value'])} [{pct(ka['low'])}, {pct(ka['high'])}] | {pct(kb['value'])} "
                         f"[{pct(kb['low'])}, {pct(kb['high'])}] | {pct(a['share']['fraction'])} | {null_share} | "
                         f"{word} |")
        lines.append("")
    return lines


def markdown(r: dict, null: dict | None = None) -> str:
    model = ("the null DPO run (train-dpo --labels shuffled: no consistent preference; its command in "
             "null_adapter_card.json)" if r.get("control") == "null" else "the shipped adapter")
    lines = [f"# How much of DPO can one vector do? The {r['pair']} pair"
             + (" — null control" if r.get("control") == "null" else ""), "",
             f"Written by `scripts/best_vector.py` ({'; '.join(r['commands'])}); {r['seconds']:.0f} s on 2 CPU cores. "
             f"Model: the embedded SmolLM2-135M-Instruct and {model}. Vectors added at every position of the "
             f"site; {r['k']} random directions per arm, each of the arm's norm. Share = the implicit reward margin "
             "relative to the base (reply tokens) moved, as a fraction of the DPO model's, paired bootstrap 95 % CI; "
             "KL explained = 1 − KL(target ‖ steered)/KL(target ‖ start). Fitted vectors: "
             + r.get("fit_rule", "unguarded — the last iterate, no check pairs (fitted before the guarded fit; re-run "
                     "the command to re-fit)") + ".", ""]
    lines += per_site(r)
    for layer, res in r["layers"].items():
        lines += [f"## Site {layer}", "", "Cosines: " + ", ".join(f"{k} {v:+.2f}" for k, v in res["cos"].items()), ""]
        if "fits" in res:
            lines += [fit_line(res["fits"]), ""]
        for split in ("eval", "fit"):
            e = res[split]
            lines += [f"**{'Eval part' if split == 'eval' else 'Fit rows (overfitting check)'}** ({e['n']} pairs; DPO "
                      f"margin {e['dpo_margin']:+.2f} nats, KL(DPO‖base) {e['kl_dpo_base']:.4f}):", "",
                      "| arm | on | ‖v‖ | share of the gap [95 % CI] | random shares | rank (by distance to 100 %) | "
                      "KL explained [95 % CI] | random KL explained | verdict |",
                      "| --- | --- | ---: | --- | --- | --- | --- | --- | --- |"]
            for label, a in e["arms"].items():
                s, k = a["share"], a["kl_explained"]
                rank = f"{a['rank']['label']}, p = {a['rank']['p_value']:.3f}" if a["rank"] else "—"
                lines.append(f"| {label} | {a['side']} | {a['norm']:.1f} | {pct(s['fraction'])} [{pct(s['low'])}, "
                             f"{pct(s['high'])}] | {span(a['random_share'])} | {rank} | "
                             f"{pct(k['value'])} [{pct(k['low'])}, {pct(k['high'])}] | "
                             f"{span(a['random_kl_explained'])} | "
                             f"{verdict(a)} |")
            lines.append("")
    lines += ["## Answers (computed from the eval-part tables)", ""] + [f"* {x}" for x in r["answers"]] + [""]
    if null:
        lines += null_comparison(r, null)
    return "\n".join(lines)


def per_site(r: dict) -> list[str]:
    """One row per site: each arm's eval-part share of DPO's margin and its verdict ("not beyond random" marked †),
    and cos(u*, −v*) — the per-layer answer at a glance, rendered from the site tables below."""
    labels = [label for label, *_ in ARMS]
    lines = ["## Per site (eval part): share of DPO's margin and verdict", "",
             "| site | " + " | ".join(labels) + " | cos(u*, −v*) |", "| ---: |" + " --- |" * (len(labels) + 1)]
    for layer, res in r["layers"].items():
        cells = []
        for label in labels:
            a = res["eval"]["arms"][label]
            word = verdict(a)
            cells.append(f"{pct(a['share']['fraction'])} {word.split(' (')[0]}" + (" †" if "not beyond" in word else ""))
        lines.append(f"| {layer} | " + " | ".join(cells) + f" | {res['cos']['cos(u*, −v*)']:+.2f} |")
    return lines + ["", "Install arms on the base (+v̄, +v*, −u*, +v_DPO), undo arms on the DPO model; † = not nearest "
                    "100 % of its random directions at p ≤ 0.05. The sections below give the CIs.", ""]


def answers(r: dict) -> list[str]:
    out = []
    for side, word in (("base", "install"), ("dpo", "undo")):
        best = None
        for layer, res in r["layers"].items():
            for label, a in res["eval"]["arms"].items():
                if a["side"] != side or verdict(a).startswith(("not shown", "no gap")):
                    continue  # a share whose CI holds 0 (or of no gap) is near nothing
                dist = abs(1 - a["share"]["fraction"])
                if best is None or dist < best[0]:
                    best = (dist, layer, label, a)
        if best is None:
            out.append(f"No vector's share of DPO's margin is told apart from 0 when {word}ing, at any site measured "
                       f"(every CI holds 0, or DPO's own margin does).")
        if best:
            _, layer, label, a = best
            vbar = r["layers"][layer]["eval"]["arms"]["+v̄" if side == "base" else "−v̄"]
            out.append(f"Nearest to {word}ing all of DPO's margin: {label} at site {layer}, "
                       f"{pct(a['share']['fraction'])} [{pct(a['share']['low'])}, {pct(a['share']['high'])}] "
                       f"({verdict(a)}; it explains {pct(a['kl_explained']['value'])} of the KL to the "
                       f"{'DPO model' if side == 'base' else 'base'}); v̄ at that site: "
                       f"{pct(vbar['share']['fraction'])} ({verdict(vbar)}).")
    for layer, res in r["layers"].items():
        c = res["cos"]["cos(u*, −v*)"]
        out.append(f"Site {layer}: cos(u*, −v*) = {c:+.2f} — the undo vector is "
                   f"{'close to' if c >= 0.9 else 'not'} the negative of the install vector (threshold 0.9).")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", choices=sorted(DATA), default="refusal")
    ap.add_argument("--layers", default="20")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--fit-rows", type=int, default=48, help="pairs each vector is fitted on (of its part)")
    ap.add_argument("--train-rows", type=int, default=None,
                    help="pairs v_DPO is fitted on (of the train part; default: --fit-rows) — its check loss over a "
                         "quarter of 1000+ train pairs every steps/10 costs more than the distilled fits")
    ap.add_argument("--max-prompt", type=int, default=64, help="prompt tokens kept (the last ones)")
    ap.add_argument("--max-completion", type=int, default=32, help="reply tokens kept (the first ones)")
    ap.add_argument("--rows", type=int, default=24, help="eval pairs measured (and as many fit rows, without randoms)")
    ap.add_argument("--random", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--control", choices=["none", "null"], default="none",
                    help="null: the same fits and measures with the null DPO run (train-dpo --labels shuffled, trained "
                    "into build/null_adapters/<pair> when missing) in place of the shipped adapter; writes <pair>/null/")
    ap.add_argument("--out", default=None)
    ap.add_argument("--render", action="store_true", help="only re-write table.md (and the answers) from table.json")
    args = ap.parse_args()
    if args.render:
        out = Path(args.out or ROOT / "results" / "best_vector" / args.pair / ("null" if args.control == "null" else ""))
        result = json.loads((out / "table.json").read_text())
        result["answers"] = answers(result)
        (out / "table.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        (out / "table.md").write_text(markdown(result, control_of(out)), encoding="utf-8")
        return 0
    if not DATA[args.pair].is_file():
        raise SystemExit(f"{DATA[args.pair]} is missing: build it first (scripts/refusal_pipeline.sh's build-refusal "
                         f"line for the refusal pair)")
    started = time.perf_counter()
    null = args.control == "null"
    out = Path(args.out or ROOT / "results" / "best_vector" / args.pair / ("null" if null else ""))
    layers = [int(x) for x in args.layers.split(",")]
    limits = {"max_prompt": args.max_prompt, "max_completion": args.max_completion}
    adapter = null_adapter(args.pair) if null else default_adapter(pair=args.pair)
    files = fit(args.pair, adapter, layers, args.steps, out, args.fit_rows, limits, null=null, train_rows=args.train_rows)
    vbar_file = null_vbar(args.pair, adapter, out) if null else default_vector(pair=args.pair)
    vbar = load_vectors(str(vbar_file)).vectors
    pair_obj = ModelPair.load(None, adapter=str(adapter), device="cpu")
    eval_rows = list(load_pairs(DATA[args.pair], part="eval"))[:args.rows]
    fit_rows = {p: list(load_pairs(DATA[args.pair], part=p))[:args.rows] for p in ("vector", "train")}
    settings = {"pair": args.pair, "control": args.control, "k": args.random, "rows": args.rows,
                "fit_rows": args.fit_rows, "steps": args.steps, "limits": limits, "seed": args.seed,
                "fit_rule": FIT_RULE, **({"train_rows": args.train_rows} if args.train_rows is not None else {})}
    result = {**settings, "adapter": str(adapter.relative_to(ROOT) if adapter.is_relative_to(ROOT) else adapter),
              "layers": {}}
    if null:
        card = json.loads((adapter / "dpo_card.json").read_text())
        result["null_adapter"] = {"command": card["command"], "labels": card["data"].get("labels"),
                                  "heldout": card["metrics"].get("eval")}
        out.mkdir(parents=True, exist_ok=True)
        (out / "null_adapter_card.json").write_text(json.dumps(card, indent=1) + "\n")
    previous = json.loads((out / "table.json").read_text()) if (out / "table.json").is_file() else {}
    if previous and all(previous.get(k) == v for k, v in settings.items()):
        result["layers"] = previous["layers"]  # sites measured before with these settings are kept
        result["seconds"] = previous.get("seconds", 0.0)
    commands = set(previous.get("commands", [previous["command"]] if "command" in previous else []))
    result["commands"] = sorted(commands | {"python scripts/best_vector.py " + " ".join(sys.argv[1:])})
    for layer in layers:
        if str(layer) in result["layers"]:
            continue
        vectors = {"vbar": vbar[layer].float(),
                   **{n: load_vectors(by_layer[layer]).vectors[layer].float() for n, by_layer in files.items()}}
        res = {"cos": cosines(vectors), "fits": {n: fit_summary(by_layer[layer], layer) for n, by_layer in files.items()},
               "eval": evaluate(pair_obj, eval_rows, layer, vectors, args.random, args.seed, limits)}
        # the overfitting check: v̄, v*, u* were fitted on the vector part (v_DPO on train): measured on the vector
        # part's first rows (the fitted ones), without random directions
        res["fit"] = evaluate(pair_obj, fit_rows["vector"], layer, vectors, 0, args.seed, limits)
        res["fit"]["part"] = "vector (v_DPO: fitted on train, so these rows are held out for it)"
        result["layers"][str(layer)] = res
        print(f"site {layer}: " + ", ".join(f"{k} {pct(a['share']['fraction'])}" for k, a in res["eval"]["arms"].items()),
              flush=True)
        result["layers"] = dict(sorted(result["layers"].items(), key=lambda kv: int(kv[0])))
        result["answers"] = answers(result)
        result["seconds"] = result.get("seconds", 0.0) + time.perf_counter() - started
        started = time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)  # written after every site: a killed run keeps the sites it finished
        (out / "table.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        (out / "table.md").write_text(markdown(result, control_of(out)), encoding="utf-8")
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
