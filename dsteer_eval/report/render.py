"""The report's page: the verdict card, one table and one figure per (task, metric), in Markdown (figures as
PNG files beside it) and in one self-contained HTML file (figures embedded), plus ``report.json``. Both pages
are written from the same structured blocks (:mod:`dsteer_eval.report.page`)."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from dsteer_eval.common.output_folder import atomic_write_text, check_free, staged_folder
from dsteer_eval.report.page import html_lines, markdown_lines

REPORT_JSON, REPORT_MD, REPORT_HTML = "report.json", "report.md", "report.html"


def _pct(x) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.1f} %"


def _ci(c: dict) -> str:
    if c.get("fraction") is None:
        return "—"
    return f"{_pct(c['fraction'])} [{_pct(c['low'])}, {_pct(c['high'])}]"


def _rank(rank) -> str:
    """v̄'s rank by distance to the target among the random directions, its p-value and z-score."""
    if not rank:
        return "—"
    label = rank.get("label") or f"{rank['rank']} of {rank['k'] + 1}"
    z = rank.get("z")
    return f"{label}, p = {rank['p_value']:.3f}" + ("" if z is None else f", z = {z:+.1f}")


def _shown_ci(c: dict, verdicts: dict) -> str:
    """The fraction and its CI, or nothing where the gap is not shown; '(unstable gap)' where it is wide."""
    if not verdicts.get("fraction_shown", True):
        return "— (gap not shown)"
    return _ci(c) + (" (unstable gap)" if verdicts.get("unstable") else "")


def _docs(row: dict, gap: dict | None) -> str:
    """The documents a row uses, said where they are fewer than the gap's (`` (110 documents; random
    directions compared on 90)``), else nothing."""
    n, shared, whole = row.get("documents"), row.get("random_documents"), (gap or {}).get("n")
    parts = []
    if n is not None and n != whole:
        parts.append(f"{n} documents")
    if shared is not None and shared != n:
        parts.append(f"random directions compared on {shared}" + ("" if parts else " documents"))
    return f" ({'; '.join(parts)})" if parts else ""


CARD_HEADER = ["task / metric", "side", "point", "gap closed by v̄ [95 % CI]", "random band (mean)", "v̄'s rank",
               "moved the wrong way (random)", "degenerate", "moves", "≥ half", "vs random"]
CARD_ALIGN = ["---", "---", "---", "---", "---", "---", "---", "---:", "---", "---", "---"]


def card_rows(card: dict) -> list[list[str]]:
    """The verdict card's table rows (cells as plain text), one per side and steered point."""
    rows = []
    for e in card["entries"]:
        run = f"{e['label']}: " if e.get("label") else ""
        for r in e["rows"]:
            band = r["random_band"]
            v = r["verdicts"]
            band_text = "—" if band is None or not v.get("fraction_shown", True) else \
                f"{_pct(band[0])} … {_pct(band[1])} ({_pct(r['random_mean'])})"
            flag = " (beyond ceiling)" if r["beyond_ceiling"] else ""
            rows.append([f"{run}{e['task']} / {e['metric']}", e["side"], f"{r['point']}{_docs(r, e['gap'])}{flag}",
                         _shown_ci(r["closure"], v),
                         band_text, _rank(r["rank"]) if v.get("fraction_shown", True) else "—",
                         f"{_pct(r['per_document']['wrong_way'])} ({_pct(r['random_wrong_way'])})",
                         _pct(r["degeneration_rate"]), f"**{v['moves']}**", f"**{v['half']}**",
                         f"**{v['vs_random']}**"])
        p = e.get("prompting")
        if p:
            rows.append([f"{run}{e['task']} / {e['metric']}", e["side"],
                         f"prompting: {p['instruction']} instruction (reference){_docs(p, e['gap'])}",
                         _shown_ci(p["closure"], p["verdicts"]), "—", "—", _pct(p["per_document"]["wrong_way"]), "—",
                         f"**{p['verdicts']['moves']}**", f"**{p['verdicts']['half']}**", "—"])
    return rows


def card_blocks(card: dict) -> list[tuple]:
    """The card: a line per sweep still running, then its table."""
    return [("para", f"**still running**: {line}") for line in card.get("running") or []] + \
        [("table", CARD_HEADER, CARD_ALIGN, card_rows(card))]


def card_lines(card: dict) -> list[str]:
    """The verdict card as Markdown lines (also what ``dsteer-eval report`` prints)."""
    return _trimmed(markdown_lines(card_blocks(card)))


def _trimmed(lines: list[str]) -> list[str]:
    while lines and not lines[-1]:
        lines = lines[:-1]
    return lines


def _gap_bullets(card: dict) -> list[tuple]:
    out, seen = [], set()
    for e in card["entries"]:
        key = (e.get("label"), e["task"], e["metric"])
        if key in seen or not e["gap"]:
            continue
        seen.add(key)
        g = e["gap"]
        run = f"{e['label']}: " if e.get("label") else ""
        out.append(("bullet", f"{run}{e['task']} / {e['metric']}: DPO {g['dpo_mean']:.4g}, base {g['base_mean']:.4g}, "
                    f"DPO − base {g['mean']:+.4g} [{g['low']:+.4g}, {g['high']:+.4g}] over {g['n']} documents (a card "
                    f"row that uses fewer names its own) "
                    f"({'gap shown' if e['gap_shown'] else 'gap NOT shown: fractions of it are meaningless'})"))
    return out


def _names(report: dict, count: int) -> list[str]:
    return report.get("labels") or [f"sweep {i + 1}" for i in range(count)]


def _args(report: dict) -> str:
    model_args = report["model_args"]
    if isinstance(model_args, str):
        return f"`{model_args}`"
    return "; ".join(f"{name}: `{args}`" for name, args in zip(_names(report, len(model_args)), model_args))


def _position(report: dict) -> str:
    position = report["position"]
    if isinstance(position, str):
        return f"position `{position}`"
    return "position: " + "; ".join(f"{name}: `{p}`" for name, p in zip(_names(report, len(position)), position))


def _controls(report: dict) -> list[tuple]:
    """Which random directions the verdicts rest on: K and the seed per sweep (dsteer_eval.sweep.control_seed)."""
    found = report.get("controls") or []
    if not found:
        return []
    parts = [f"{c['label'] + ': ' if c.get('label') else ''}K = {c['k']}, seed {c['seed']}"
             + ("" if c.get("per_sweep") else " (written before each sweep drew its own seed: the population every "
                                                "such sweep shares)") for c in found]
    return [("para", "Random directions: " + "; ".join(parts) + ". Within a sweep the same K directions serve every "
                     "α and both sides (one curve per direction), so ranks at several α of one sweep are not "
                     "independent draws.")]


RULES = ("Rules (computed, docs/report.md): a fraction is printed only where the gap's CI excludes 0 (*unstable* "
         "where its bound nearest 0 is below half the estimate); **moves** = the fraction's CI lies above 0 (*wrong "
         "way*: below 0); **≥ half** = it lies at or above {half} (*overshoot*: above 1, never 'more'); **vs random** "
         "= decided only when v̄ moves toward the target and K ≥ {min_random} (else *not decided* / *underpowered*): "
         "supported when v̄'s empirical p ≤ 0.05, v̄ ranked among K norm-matched random directions by distance to "
         "the target |1 − f| (ties shown as ties; z = (mean random distance − v̄'s) / SD). Fraction of the gap: "
         "mean(moved − start) / mean(target − start) per side; a point past the measured strength ceiling is flagged "
         "only on the layer and side the ceiling was measured for. Best point: nearest the target among points that "
         "move toward it, within the ceiling, at most {max_degenerate:.0%} degenerate.")


def report_blocks(report: dict) -> list[tuple]:
    """The whole page as blocks (:mod:`dsteer_eval.report.page`)."""
    card = report["card"]
    blocks = [("heading", 1, f"D-STEER report: {report['title']}"),
              ("para", f"Generated by dsteer-eval {report['package_version']} from "
                       f"{', '.join(f'`{s}`' for s in report['sweeps'])}; every number and verdict is computed from "
                       "the sweep's per-document values (none typed)."),
              ("para", f"Model args: {_args(report)}. Steered at layer(s) {', '.join(report['layers'])}, "
                       f"{_position(report)}; data: the tasks' documents ({', '.join(report['tasks'])})."),
              *_controls(report), ("heading", 2, "The gap")] + _gap_bullets(card) + [("heading", 2, "Verdict card")] + card_blocks(card)
    blocks += [("bullet", f"not measured: {m}") for m in report.get("missing") or []]
    blocks += [("bullet", f"shown once: {n}") for n in report.get("notes") or []]
    for e in card["entries"]:
        if e["best"]:
            b = e["best"]
            run = f"{e['label']}: " if e.get("label") else ""
            which = " and ".join(b["points"]) + " (a tie)" if b.get("tie") else b["point"]
            blocks.append(("bullet", f"best point, {run}{e['task']} / {e['metric']}, {e['side']} side: {which} "
                                     f"closes {_pct(b['fraction'])} [{_pct(b['low'])}, {_pct(b['high'])}] of the gap "
                                     f"{e['gap']['mean']:+.4g} [{e['gap']['low']:+.4g}, {e['gap']['high']:+.4g}]"
                                     f"{' (unstable gap)' if b.get('unstable') else ''} ({b['note']})"))
    blocks += [("para", RULES.format(**card["rules"])),
               ("heading", 2, "The authors' revised numbers (reference, not our measurements)"),
               ("para", f"Source: {card['authors']['source']}"),
               ("table", ["what", "value"], ["---", "---:"], [[r["what"], _pct(r["value"])]
                                                              for r in card["authors"]["rows"]]),
               ("heading", 2, "Dose-response")] + _figures(report, "dose_response")
    if report.get("behaviour"):
        blocks += [("heading", 2, "Behaviour along the grid"),
                   ("para", "Rates over the documents with a usable reply (degenerate replies screened out and counted), "
                            "mean [95 % bootstrap CI], Δ = paired change from the same side's α = 0 [CI]; fidelity = "
                            "BLEU / ROUGE-L (0–100) of each reply against the same side's α = 0 reply, over every "
                            "document; random = the K norm-matched random directions' band (min … max of their means).")]
        blocks += behaviour_blocks(report["behaviour"]) + _figures(report, "behaviour")
    if report.get("where"):
        blocks += [("heading", 2, "Where it works: by layer and position"),
                   ("para", "At one α per side (v̄ of each layer is that layer's own mean DPO − base difference, so α = "
                            "±1 is one full mean shift at any layer). The layer, layer set or sweep is **chosen** on "
                            "the selection documents (probe part, never the eval rows) and reported on the eval "
                            "documents; the best on the eval documents is shown for reference only (chosen on the rows "
                            "it is reported on: optimistic).")]
        blocks += where_blocks(report["where"]) + _figures(report, "where")
    return blocks


def markdown(report: dict) -> str:
    return "\n".join(_trimmed(markdown_lines(report_blocks(report)))) + "\n"


def _figures(report: dict, section: str) -> list[tuple]:
    return [("figure", fig["title"], fig["file"]) for fig in report.get("figures", [])
            if fig.get("section", "dose_response") == section]


def _num(cell, pct: bool) -> str:
    if not cell:
        return "—"
    f = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.1f}")
    return f"{f(cell['mean'])} [{f(cell['low'])}, {f(cell['high'])}]"


def _band_text(band, pct: bool) -> str:
    if not band:
        return ""
    f = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.1f}")
    return f"; random {f(band['low'])} … {f(band['high'])}"


def behaviour_blocks(entries: list[dict]) -> list[tuple]:
    """One table per generation task and side: rates (in %), degenerate share, fidelity to the unsteered
    replies, each v̄ number beside the random directions' band."""
    out = []
    for e in entries:
        run = f"{e['label']}: " if e.get("label") else ""
        unvalidated = set(e.get("unvalidated") or [])
        if e.get("classifier"):
            out += _classifier_blocks(e["classifier"], unvalidated)
        for side, found in e["sides"].items():
            header = ["point", "α"] + [f"{m} % (Δ)" + (" — unvalidated" if m in unvalidated else "")
                                       for m in e["rates"]] + \
                ["degenerate", "BLEU vs unsteered", "ROUGE-L vs unsteered"]
            align = ["---", "---:"] + ["---" for _ in e["rates"]] + ["---", "---", "---"]
            rows = []
            for r in found["rows"]:
                rnd = r.get("random") or {}
                cells = []
                for m in e["rates"]:
                    delta = r["change"].get(m)
                    d = f" (Δ {100 * delta['mean']:+.1f} [{100 * delta['low']:+.1f}, {100 * delta['high']:+.1f}])" \
                        if delta else ""
                    cells.append(_num(r["rates"].get(m), True) + d + _band_text((rnd.get("rates") or {}).get(m), True))
                dg = r["degenerate"]
                degen = "—" if not dg else (f"{dg['count']} of {dg['n']} ({100 * dg['share']:.1f} %)"
                                            + _band_text(rnd.get("degenerate"), True) + (" %" if rnd else ""))
                fid = [_num(r["fidelity"].get(n), False) + _band_text((rnd.get("fidelity") or {}).get(n), False)
                       for n in ("bleu", "rougeL")]
                k = f" (K = {rnd['k']})" if rnd else ""
                rows.append([f"{r['point']}{k}", f"{r['alpha']:g}"] + cells + [degen] + fid)
            out += [("para", f"**{run}{e['task']}, {side} side** ("
                             + ("DPO − |α|·v̄" if side == "dpo" else "base + α·v̄") + ")"),
                    ("table", header, align, rows)]
    return out


def _classifier_blocks(check: dict, unvalidated: set) -> list[tuple]:
    """The behaviour classifier's agreement with readers' held-out labels, as the rates' reader needs it."""
    pct = _pct
    head = (f"The rates are labelled by the behaviour classifier **{check['classifier']}** "
            "(docs/behaviour-labels.md). Its agreement with readers' labels on the labelled set's part "
            f"`{check['split']}`, never read while it was written (validated = precision and recall ≥ 0.8 on the "
            "rate's class):")
    if not check.get("kinds"):
        return [("para", head + f" {check.get('note', 'not measured')}. Every classified rate below is "
                                "**unvalidated**.")]
    rows = []
    for kind, k in check["kinds"].items():
        c = next(x for x in k["grouped"]["classes"] if x["label"] == k["headline"])
        rows.append([kind, k["headline"], str(k["n"]), pct(c["precision"]), pct(c["recall"]),
                     "—" if k["grouped"]["kappa"] is None else f"{k['grouped']['kappa']:.2f}",
                     f"{pct(k['reader_rate'])} / {pct(k['classifier_rate'])}",
                     "**yes**" if k["validated"] else "**no**"])
    tail = ("" if not unvalidated else f" Rates marked *unvalidated* below: {', '.join(sorted(unvalidated))}.")
    return [("para", head + tail),
            ("table", ["kind", "class", "replies", "precision", "recall", "κ (groups)", "rate: readers / classifier",
                       "validated"], ["---", "---", "---:", "---:", "---:", "---:", "---", "---"], rows)]


def behaviour_lines(entries: list[dict]) -> list[str]:
    return markdown_lines(behaviour_blocks(entries))


WHERE_HEADER = ["sweep", "layer", "selection rows: gap closed", "eval rows: gap closed [95 % CI]",
                "random band (mean)", "v̄'s rank", "vs random"]


def where_blocks(entries: list[dict]) -> list[tuple]:
    out = []
    for e in entries:
        for side, found in e["sides"].items():
            if not found["candidates"]:
                continue
            rows = []
            for c in found["candidates"]:
                band = c["random_band"]
                band_text = "—" if band is None else f"{_pct(band[0])} … {_pct(band[1])} ({_pct(c['random_mean'])})"
                mark = " **← chosen**" if c["chosen"] else (f" (not eligible: {c['excluded']})" if c.get("excluded")
                                                             else "")
                rows.append([c["label"] or "—", f"{c['layer']}{mark}", _pct(c["select"]["fraction"]),
                             _shown_ci(c["eval"], c["verdicts"]), band_text, _rank(c["rank"]),
                             c["verdicts"]["vs_random"]])
            out += [("para", f"**{e['task']} / {e['metric']}, {side} side, α = {found['alpha']:g}** (chosen on "
                             f"{e['select_task']})"),
                    ("table", WHERE_HEADER, ["---"] * len(WHERE_HEADER), rows)]
            ch, best, runner = found["chosen"], found["best_on_eval"], found.get("runner_up")
            if ch:
                out.append(("bullet", f"chosen ({e['select_task']}, nearest the target): "
                                      f"{ch['label'] + ', ' if ch['label'] else ''}layer "
                                      f"{ch['layer']} closes {_shown_ci(ch['eval'], ch['verdicts'])} of the eval gap, "
                                      f"{_rank(ch['rank'])} "
                                      f"(moves: **{ch['verdicts']['moves']}**, ≥ half: **{ch['verdicts']['half']}**, "
                                      f"vs random: **{ch['verdicts']['vs_random']}**)"))
            if runner:
                d = runner.get("difference")
                diff = "—" if not d else f"{_pct(d['mean'])} [{_pct(d['low'])}, {_pct(d['high'])}]"
                verdict = "resolved" if runner["resolved"] else "**choice not resolved** (the CI contains 0)"
                out.append(("bullet", f"runner-up: {runner['label'] + ', ' if runner['label'] else ''}layer "
                                      f"{runner['layer']} ({_pct(runner['select_fraction'])} on the selection rows); "
                                      f"the chosen one is nearer the target by {diff} of the gap: {verdict}"))
            if best:
                out.append(("bullet", f"best on the eval rows (optimistic): "
                                      f"{best['label'] + ', ' if best['label'] else ''}layer {best['layer']}, "
                                      f"{_shown_ci(best['eval'], best['verdicts'])}"))
    return out


def where_lines(entries: list[dict]) -> list[str]:
    return markdown_lines(where_blocks(entries))


def html_page(report: dict, folder: Path) -> str:
    """One self-contained page from the same blocks as the Markdown, figures embedded as base64 PNG."""
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:90%}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report['title'])}</title>"
            f"<style>{style}</style></head><body>" + "\n".join(html_lines(report_blocks(report), folder))
            + "</body></html>\n")


def write_report(report: dict, out, *, draw, overwrite: bool = False) -> Path:
    """Write ``report.json``, ``report.md``, ``report.html`` and the figures (``draw(report, folder)`` returns
    the figure entries) into ``out``, atomically."""
    out = check_free(out, overwrite)
    with staged_folder(out) as tmp:
        report = dict(report)
        report["figures"] = draw(report, tmp)
        atomic_write_text(tmp / REPORT_JSON, json.dumps(report, indent=1, allow_nan=False) + "\n")
        atomic_write_text(tmp / REPORT_MD, markdown(report))
        atomic_write_text(tmp / REPORT_HTML, html_page(report, tmp))
    return out
