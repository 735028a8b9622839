#!/usr/bin/env python
"""Write results/README.md from the committed results alone: every number and verdict in it is read
from a results file (the DPO card's gate, the demo leaderboard's paired tables and claims, the probe
report's verdicts.md); nothing is typed. `--check` compares instead of writing (a test runs it).

    python scripts/results_readme.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
ARTIFACTS = ROOT / "dsteer_eval" / "artifacts" / "smollm2"
CARD = ARTIFACTS / "refusal" / "adapter" / "dpo_card.json"
HH_CARD = ARTIFACTS / "hh" / "adapter" / "dpo_card.json"
DEMO = RESULTS / "demo_smollm2"
HH_DEMO = RESULTS / "demo_smollm2_hh"
PROBE = RESULTS / "smollm2_refusal"
HH_PROBE = RESULTS / "smollm2_hh"
PIPELINE = ROOT / "scripts" / "refusal_pipeline.sh"


def _commands() -> str:
    lines = [line for line in PIPELINE.read_text().splitlines() if line and not line.startswith(("#", "set ", "cd ",
                                                                                               "export ", "BIN=",
                                                                                               "SHARED=", "ART=",
                                                                                               "PAIRS="))]
    return "\n".join("    " + line for line in lines)


def _card(path: Path = CARD) -> str:
    card = json.loads(path.read_text())
    ev, tr, gate = card["metrics"].get("eval", {}), card["metrics"].get("train", {}), card.get("gate", {})
    d = card["data"]
    fmt = lambda m: (f"reward accuracy {m['reward_accuracy']:.3f}, margin {m['reward_margin_mean']:+.3f} ± "  # noqa: E731
                     f"{m['reward_margin_stderr']:.3f} (n = {m['pairs']})") if m else "—"
    return "\n".join([
        f"* command: `{card['command']}`",
        f"* data: part `{d.get('part')}`, {d.get('pairs_train')} train pairs, {d.get('pairs_eval')} held-out "
        f"(eval part) pairs; prompts truncated: {d.get('prompts_truncated')}",
        f"* {card['steps_done']} steps, {card['seconds_per_step']} s/step on this machine's CPU",
        _hparams(card),
        f"* train pairs: {fmt(tr)}",
        f"* **held-out (eval part, never trained on): {fmt(ev)}**",
        *_heldout(card),
        f"* gate ({gate.get('rule')}{', ' + gate['measured_on'] if gate.get('measured_on') else ''}): "
        f"**{'passed' if gate.get('passed') else 'failed'}**"
        + (f" — margin {gate['margin_in_stderrs']:.1f} stderr" if "margin_in_stderrs" in gate else "")
        + ("" if "passed_every_kind" not in gate else
           f"; by kind: " + ", ".join(f"{k} **{'passed' if v['passed'] else 'failed'}** "
                                      f"({v['margin_in_stderrs']:+.1f} stderr, accuracy {v['reward_accuracy']:.3f})"
                                      for k, v in gate["by_kind"].items())),
        *([f"* gate at training time ({card['gate_at_training'].get('pairs')} pairs): "
           f"{'passed' if card['gate_at_training'].get('passed') else 'failed'}"] if card.get("gate_at_training") else []),
    ])


def _hparams(card: dict) -> str:
    hp, choice = card["hyperparameters"], card.get("hparam_choice")
    line = f"* β {hp['beta']:g}, learning rate {hp['learning_rate']:g}"
    if not choice:
        return line + ": not tied to a hyper-parameter sweep in the card"
    return (line + f": the point chosen by `{choice['sweep']}` ({choice['rule']}; measured on the "
            f"{choice['measured_on']}), checked and recorded in the card (`hparam_choice`, sweep sha256 "
            f"{choice['sha256'][:12]}…)")


def _heldout(card: dict) -> list[str]:
    """The card's re-measured held-out rewards (``dsteer-eval dpo-gate --write-card``), pooled and by kind."""
    out = []
    for part, entry in sorted(card.get("heldout", {}).items()):
        s = entry["summary"]
        out.append(f"* **every {part}-part pair ({entry['pairs']}; `{entry['command']}`): reward accuracy "
                   f"{s['reward_accuracy']:.3f}, margin {s['reward_margin_mean']:+.3f} ± {s['reward_margin_stderr']:.3f}**")
        for kind, k in entry.get("by_kind", {}).items():
            out.append(f"  * {kind} ({k['pairs']} pairs): reward accuracy {k['reward_accuracy']:.3f}, margin "
                       f"{k['reward_margin_mean']:+.3f} ± {k['reward_margin_stderr']:.3f}")
    return out


def _hparam_sweep(folder: str = "dpo_hparam_sweep") -> list[str]:
    md = RESULTS / folder / "sweep.md"
    if not md.is_file():
        return []
    text = md.read_text().strip().splitlines()
    return [f"## `{folder}/`: β × learning rate, selected on the vector part", "", *text[2:], ""]


def _seeds(folder: str = "smollm2_refusal_seed1", script: str = "scripts/refusal_seeds.sh") -> list[str]:
    md = RESULTS / folder / "seed_comparison.md"
    if not md.is_file():
        return []
    text = md.read_text().strip().splitlines()
    noise = RESULTS / folder / "seed_noise.md"
    extra = ["### The seed effect against the sampling noise of v̄ (`scripts/seed_noise.py`)", "",
             *noise.read_text().strip().splitlines()[2:], ""] if noise.is_file() else []
    return [f"## `{folder}/`: the same recipe, training seed 1 (`{script}`)", "", *text[2:], "", *extra]


def _demo(folder: Path, title: str) -> list[str]:
    sweep = json.loads((folder / "sweep.json").read_text())
    return [
        f"## `{folder.name}/`: {title}",
        "",
        f"Tasks {', '.join(sweep['tasks'])}; layer {', '.join(sweep['layers'])}; α grid {sweep['alphas']} on the DPO "
        f"side; points: {', '.join(p['name'] for p in sweep['points'])}. The leaderboard, its paired tables "
        "and the claims as the command printed them:",
        "",
        (folder / "leaderboard.md").read_text().strip(),
        "",
    ]


def _probe(folder: Path, title: str) -> list[str]:
    return [f"## `{folder.name}/`: {title}", "", (folder / "verdicts.md").read_text().strip(), ""]


def _hh() -> list[str]:
    """The HH harmless pair (pair=hh), when scripts/hh_pipeline.sh has produced it."""
    if not HH_CARD.is_file():
        return []
    return [
        "## The HH harmless pair (`pair=hh`, `scripts/hh_pipeline.sh`)",
        "",
        "SmolLM2-135M-Instruct + a LoRA adapter trained with DPO on the train part of the HH harmless-base "
        "dev pairs (`dsteer_eval/artifacts/smollm2/hh/adapter/dpo_card.json`); its gate is measured on every "
        "eval-part pair:",
        "",
        _card(HH_CARD),
        "",
        *_hparam_sweep("dpo_hparam_sweep_hh"),
        *_seeds("smollm2_hh_seed1", "scripts/hh_pipeline.sh"),
        *(_demo(HH_DEMO, "the main job on the HH pair and the eval-part HH rows (`dsteer_hh_offline`)")
          if (HH_DEMO / "leaderboard.md").is_file() else []),
        *(_probe(HH_PROBE, "the HH pair's probes with their nulls (probe part, never trained on)")
          if (HH_PROBE / "verdicts.md").is_file() else []),
    ]


# the D-STEER report's committed runs (scripts/report_pipeline.sh, docs/report.md), in reading order
REPORTS = [
    ("main_k20", "the README's main job: refusal pair, first 30 eval documents, α = −1 / +1, K = 20"),
    ("main_k8", "the earlier main job: refusal pair, first 100 eval documents, α = −1 / +1, K = 8"),
    ("report_refusal_own", "refusal pair, its own v̄: dose-response on both sides (100 eval documents, K = 8)"),
    ("report_refusal_heldout", "refusal pair: refusals in held-out phrasings (templates vs refusal)"),
    ("report_refusal_templates_vs_heldout", "refusal pair: training templates vs held-out phrasings side by side"),
    ("report_refusal_cross", "refusal pair steered by the HH pair's v̄ (cross-distribution)"),
    ("report_refusal", "refusal pair: in- vs cross-distribution v̄ side by side"),
    ("report_refusal_behaviour", "refusal pair: behaviour along the grid (generation) and both margins "
     "on 20 harmful + 20 harmless documents"),
    ("report_refusal_behaviour_fine", "refusal pair: behaviour on a finer grid, |α| ≤ 0.5, the same 20 + 20 "
     "documents (run on vLLM: `--backend vllm`)"),
    ("report_refusal_layers", "refusal pair: where v̄ works by layer and the last-five-layers set, DPO side, α = −1, "
     "50 eval + 50 selection documents, K = 8 (chosen on probe-part rows)"),
    ("report_refusal_where", "refusal pair: where v̄ works (layers, the last-five-layers set, positions; chosen "
     "on probe-part rows)"),
    ("report_hh_own", "HH pair, its own v̄ (100 eval documents, K = 8)"),
    ("toxicity_pair", "toxicity pair (Lee et al.'s setup): toxicity on the 128 eval-part RTP prompts and held-out "
     "perplexity, α = −1 / +1, K = 20"),
    ("report_hh_cross", "HH pair steered by the refusal pair's v̄ (cross-distribution)"),
    ("report_hh", "HH pair: in- vs cross-distribution v̄ side by side"),
]


def _reports() -> list[str]:
    """Per committed report: its command, the gap, and the card's rows for margins and rates (the accuracy
    rows are in each report.md), the behaviour and where tables, all rendered from report.json."""
    sys.path.insert(0, str(ROOT))
    from dsteer_eval.report.render import behaviour_lines, card_lines, where_lines

    out = ["## The D-STEER report (`scripts/report_pipeline.sh`, [docs/report.md](../docs/report.md))", ""]
    for name, title in REPORTS:
        folder = RESULTS / name
        found = next((f for f in (folder / "report" / "report.json", folder / "report.json") if f.is_file()), None)
        if found is None:
            continue
        report = json.loads(found.read_text())
        sweep = folder / "sweep.json"
        command = (json.loads(sweep.read_text()).get("provenance") or {}).get("command") if sweep.is_file() else None
        card = {**report["card"], "entries": [e for e in report["card"]["entries"] if not e["metric"].endswith("acc")]}
        out += [f"### `{name}/`: {title}", "", f"`{command}`" if command else f"from {', '.join(report['sweeps'])}",
                "", f"Full page: [{found.relative_to(RESULTS).parent / 'report.md'}]"
                f"({found.relative_to(RESULTS).parent / 'report.md'}).", "", *card_lines(card), ""]
        out += behaviour_lines(report.get("behaviour") or []) + where_lines(report.get("where") or [])
    return out


TOXICITY_CARD = ROOT / "dsteer_eval" / "artifacts" / "smollm2" / "toxicity" / "adapter" / "dpo_card.json"
LEE = RESULTS / "lee_smollm2"


def _toxicity() -> list[str]:
    """The toxicity pair (Lee et al.'s setup): its card, its report and the Lee pages."""
    if not TOXICITY_CARD.is_file():
        return []
    out = ["## The toxicity pair (`pair=toxicity`, `scripts/toxicity_pipeline.sh`, [docs/lee-et-al.md](../docs/lee-et-al.md))",
           "", "SmolLM2-135M-Instruct + a LoRA adapter trained with DPO on `build-toxicity`'s train part "
           "(`toxicity_pair/toxicity_pairs.jsonl.gz`, `toxicity_pair/toxicity_card.json`):", "", _card(TOXICITY_CARD), ""]
    pages = [(LEE / name, title) for name, title in (
        ("value_vectors.md", "part 1: the toxicity probe and the toxic value vectors of the base model"),
        ("after_dpo.md", "part 2: what DPO changed (weights, activations, the offset)"),
        ("tables.md", "Table 2 and Table 4: subtracting directions, un-aligning by key scaling"),
        ("bypass.md", "encoded prompts and earlier turns against the DPO offset"),
        ("logit_lens.md", "the logit lens of toxic tokens through the layers (Fig 3's analogue)"),
        ("README.md", "the report page: the paper's Table 2 / Table 4 beside ours, the figure analogues, differences"))]
    out += [f"* [{p.relative_to(RESULTS)}]({p.relative_to(RESULTS)}): {title}" for p, title in pages if p.is_file()]
    return out + [""]


BEST = RESULTS / "best_vector"


def _best_vector() -> list[str]:
    """Issue 36's tables: v̄ beside the fitted vectors, per pair (scripts/best_vector.py)."""
    tables = sorted(BEST.glob("*/table.json"))
    if not tables:
        return []
    out = ["## How much of DPO can one vector do? (`scripts/best_vector.py`, [docs/fitted-vectors.md](../docs/fitted-vectors.md))", ""]
    for path in tables:
        found = json.loads(path.read_text())
        md = path.with_suffix(".md").relative_to(RESULTS)
        out.append(f"* [{md}]({md}): the {found['pair']} pair, sites {', '.join(found['layers'])}, "
                   f"{found['rows']} eval pairs, K = {found['k']}")
        out += [f"  * {a}" for a in found.get("answers", [])]
        null = path.parent / "null" / "table.json"
        if null.is_file():
            control = json.loads(null.read_text())
            rel = null.with_suffix(".md").relative_to(RESULTS)
            out.append(f"  * the null DPO run (no consistent preference), same fits: [{rel}]({rel}), sites "
                       f"{', '.join(control['layers'])}; compared in the table's last section")
        for other in sorted(path.parent.glob("*/table.json")):  # the same pair with other fit settings (a larger fit)
            if other.parent.name == "null" or other.parent.name.startswith("behaviour_site"):
                continue
            more = json.loads(other.read_text())
            rel = other.with_suffix(".md").relative_to(RESULTS)
            fits = next(iter(more["layers"].values()))["fits"]
            out.append(f"  * the same measures with larger fits (v* on {fits['distill_install']['rows']} pairs, u* on "
                       f"{fits['distill_undo']['rows']}, v_DPO on {fits['dpo_vector']['rows']}, {more['steps']} steps): "
                       f"[{rel}]({rel}), sites {', '.join(more['layers'])}")
            out += [f"    * {a}" for a in more.get("answers", [])[:2]]
        for behaviour in sorted(path.parent.glob("behaviour_site*/table.json"), key=lambda b: int(b.parent.name[14:])):
            read = json.loads(behaviour.read_text())
            rel = behaviour.with_suffix(".md").relative_to(RESULTS)
            out.append(f"  * what the arms do when the model generates, read by readers (not a classifier): [{rel}]({rel}), "
                       f"layer {read['layer']}, " + " and ".join(f"{n} {kind}" for kind, n in read["requests"].items())
                       + f" eval requests, {read['replies']} replies")
    return out + [""]


LABELLED = ROOT / "tasks" / "refusal" / "behaviour_labels.jsonl"
AGREEMENT = RESULTS / "behaviour_labels" / "agreement.md"


def _wilson(k: int, n: int) -> str:
    """k of n with its 95 % Wilson interval, in %."""
    if not n:
        return "—"
    z, p = 1.959964, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    return f"{100 * p:.0f} % [{100 * max(0.0, centre - half):.0f}, {100 * min(1.0, centre + half):.0f}] ({k} of {n})"


def _hand_rates() -> list[str]:
    """The behaviour read by hand: per point of the labelled set, the readers' does-not-comply and answer
    rates (OFF counted apart), with Wilson CIs. No classifier is involved."""
    if not LABELLED.is_file():
        return []
    from collections import Counter, defaultdict

    groups = defaultdict(Counter)
    facts = {}
    for raw in LABELLED.open(encoding="utf-8"):
        x = json.loads(raw)
        point = x["id"].rsplit("/", 1)[0]
        groups[(point, x["kind"])][x["label"]] += 1
        facts[point] = (x["side"], x["alpha"], x["direction"])
    rows = ["## Behaviour read by hand (the labelled set, no classifier)", "",
            "Every reply of `tasks/refusal/behaviour_labels.jsonl` was read and labelled by the guide "
            "([docs/behaviour-labels.md](../docs/behaviour-labels.md)). Per point: the share of harmful requests the "
            "model does **not comply** with (refuses or declines) and of harmless questions it **answers**, over "
            "the replies that are not OFF (nonsense, loops, off-topic; counted apart), with 95 % Wilson intervals. "
            "Position `all`, layer 20, the refusal pair; rows from `results/report_refusal_behaviour` (its first "
            "20 + 20 eval documents), at α = 0 from 120 further eval documents (`gen-*`: documents 40–159 of the balanced "
            "order), and (`fresh-heldout4/*`) from 40 further harmful eval requests and the 22 harmless probe-part "
            "questions at DPO and base α = 0, DPO − v̄ (α = −1) and base + v̄ (α = +1), each reply read by two "
            "readers independently (the majority of three where they differ).", "",
            "| point | side | α | direction | does not comply (harmful) | OFF (harmful) | answers (harmless) | OFF (harmless) |",
            "| --- | --- | ---: | --- | --- | ---: | --- | ---: |"]
    for point in sorted(facts, key=lambda p: (facts[p][0], abs(facts[p][1]), facts[p][2], p)):
        side, alpha, direction = facts[point]
        harm, safe = groups[(point, "harmful")], groups[(point, "harmless")]
        n_harm, n_safe = sum(harm.values()) - harm["OFF"], sum(safe.values()) - safe["OFF"]
        rows.append(f"| `{point}` | {side} | {alpha:g} | {direction} | {_wilson(harm['REFUSE'] + harm['DECLINE'], n_harm)} "
                    f"| {harm['OFF']} | {_wilson(safe['ANSWER'], n_safe)} | {safe['OFF']} |")
    rows.append("")
    if AGREEMENT.is_file():
        rows += ["The classifier that scores these rates in the tasks and reports, against held-out labels "
                 f"(`{AGREEMENT.relative_to(RESULTS)}`):", "", *AGREEMENT.read_text().rstrip().splitlines(), ""]
    return rows


def build() -> str:
    parts = [
        "# results/",
        "",
        "Generated by `python scripts/results_readme.py` from the files in this folder (the numbers and",
        "verdicts are read from them, never typed). Re-create the runs with `bash scripts/refusal_pipeline.sh`:",
        "",
        _commands(),
        "",
        "## The refusal pair (the default shipped pair, `pair=refusal`)",
        "",
        "SmolLM2-135M-Instruct + a LoRA adapter trained with DPO on `build-refusal`'s train part "
        "(`dsteer_eval/artifacts/smollm2/refusal/adapter/dpo_card.json`):",
        "",
        _card(),
        "",
        *_hparam_sweep(),
        *_seeds(),
        *_demo(DEMO, "README command (1) — the thesis on real eval-part rows"),
        *_probe(PROBE, "the probes with their nulls (probe part, never trained on)"),
        *_hh(),
        *_toxicity(),
        *_best_vector(),
        *_hand_rates(),
        *_reports(),
        "## Earlier results",
        "",
        "The first HH harmless pair (`dsteer_eval/artifacts/smollm2/dpo_adapter`, LoRA r 4, 150 steps) was trained",
        "before the file-level split existed, on a random shuffle of all pairs: its probe and evaluation rows overlap",
        "its training rows, and its held-out reward accuracy was 0.59 (margin +0.02 ± 0.05: no measurable effect).",
        "It, its vector and its old probe report were removed (they are in the git history); `pair=hh` is now the",
        "split-trained pair above when it is shipped.",
        "",
    ]
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = build()
    target = RESULTS / "README.md"
    if args.check:
        if target.read_text() != text:
            print(f"{target} is out of date: run python scripts/results_readme.py", file=sys.stderr)
            return 1
        return 0
    from dsteer_eval.common.output_folder import atomic_write_text

    atomic_write_text(target, text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
