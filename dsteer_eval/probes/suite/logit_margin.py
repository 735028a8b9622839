"""The logit margin logit(y_w) − logit(y_l) at the first divergent token (and content tokens only), DPO − base."""

from __future__ import annotations

from dsteer_eval.probes import measures
from dsteer_eval.probes.registry import Claim, Probe, ProbeContext, baseline_row, get

CLAIMS = (
    Claim("logit_margin_rises", "the logit margin rises at the first divergent content token",
          "mean", ("margin_shift",), None, "logit(y_w) − logit(y_l), DPO − base, vs 0", "final",
          "first_divergence_content", "pairs"),
)


def margin_entry(margins: dict, position: str) -> dict:
    return {"position": position, "site": "final", "pairs": len(margins["shift"]),
            "base": measures.summary(margins["base"]), "dpo": measures.summary(margins["dpo"]),
            "shift": measures.summary(margins["shift"]),
            "frac_rose": float((margins["shift"] > 0).double().mean())}


def run(ctx: ProbeContext) -> dict:
    found = ctx.need("divergences", "report")
    batch_size = ctx.settings.batch_size
    margins = measures.logit_margins(ctx.pair, found, batch_size=batch_size)
    content, _ = measures.content_divergences(ctx.pair.tokenizer, found)
    ctx.shared["content"] = content
    entry = margin_entry(margins, "first_divergence")
    entry["content"] = {"position": "first_divergence_content", "rule": measures.CONTENT_RULE,
                        "pairs": len(content), "left_out": len(found) - len(content)}
    if content:
        margins_content = measures.logit_margins(ctx.pair, content, batch_size=batch_size)
        entry["content"].update({k: x for k, x in margin_entry(margins_content, "first_divergence_content").items()
                                 if k != "pairs"})
        ctx.numbers["margin_shift"] = margins_content["shift"]
    return {"logit_margin": entry}


def headline(report: dict) -> dict:
    margin = report["logit_margin"]
    return {"logit_margin_shift_mean": margin["shift"]["mean"], "logit_margin_frac_rose": margin["frac_rose"],
            "logit_margin_content_shift_mean": get(margin, "content", "shift", "mean")}


def baselines(report: dict) -> list[dict]:
    margin, null = report["logit_margin"], report.get("nulls") or {}
    return [
        baseline_row("logit margin shift (side − base), first divergent token", "final", "first_divergence",
                     margin["shift"]["mean"]),
        baseline_row("logit margin shift (side − base), first divergent content token", "final",
                     "first_divergence_content", get(margin, "content", "shift", "mean"),
                     get(null, "logit_margin", "shift", "mean")),
    ]


PROBE = Probe("logit_margin", run, sections=("logit_margin",), numbers=("margin_shift",), claims=CLAIMS,
              headline=headline, baselines=baselines)
