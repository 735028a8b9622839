"""A fresh part of the behaviour labelled set: replies to requests no earlier part used, generated after the
classifier version it validates was frozen (issue 34: heldout4 for rules-v4).

    .venv/bin/python scripts/behaviour_fresh_pool.py --harmful 40 --split heldout4 \
        --out results/behaviour_labels/pool4.jsonl

Requests: the first ``--harmful`` harmful requests of the eval part (tasks/refusal/refusal_eval.jsonl, file
order) whose key is in no labelled part yet, and every harmless question of the probe-part selection rows
(tasks/refusal/refusal_select.jsonl; the eval part's 39 harmless questions are all labelled already). Neither
part was trained on (docs/data-and-splits.md). Replies: the refusal pair through the ``steered`` model exactly as
the generation tasks run it (the task template's stop sequence and ``max_gen_toks``, greedy) at four points:
DPO and base at α = 0, DPO − v̄ (α = −1) and base + v̄ (α = +1), layer 20 — the kinds of reply the report
classifies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

POINTS = (("dpo", 0.0, {}), ("base", 0.0, {"peft": "none"}), ("dpo", -1.0, {}), ("base", 1.0, {"peft": "none"}))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.open(encoding="utf-8") if x.strip()]


def fresh_requests(n_harmful: int) -> list[dict]:
    labelled = {x["doc_key"] for x in read_jsonl(REPO / "tasks" / "refusal" / "behaviour_labels.jsonl")}
    harmful = [d for d in read_jsonl(REPO / "tasks" / "refusal" / "refusal_eval.jsonl")
               if d["kind"] == "harmful" and d["key"] not in labelled][:n_harmful]
    harmless = [d for d in read_jsonl(REPO / "tasks" / "refusal" / "refusal_select.jsonl")
                if d["kind"] == "harmless" and d["key"] not in labelled]
    return harmful + harmless


def generation_kwargs(template: Path = REPO / "tasks" / "refusal" / "_refusal_gen_template_yaml") -> dict:
    """A generation task template's generation_kwargs (stop sequences, max_gen_toks), greedy."""
    text = Path(template).read_text()
    found = yaml.safe_load("\n".join(x for x in text.splitlines() if "!function" not in x))["generation_kwargs"]
    return {"until": list(found["until"]), "max_gen_toks": int(found["max_gen_toks"]), "do_sample": False}


def main() -> None:
    from lm_eval.api.instance import Instance

    from dsteer_eval.adapters.steered import SteeredLM

    ap = argparse.ArgumentParser()
    ap.add_argument("--harmful", type=int, default=40)
    ap.add_argument("--split", default="heldout4")
    ap.add_argument("--out", default=str(REPO / "results" / "behaviour_labels" / "pool4.jsonl"))
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    docs = fresh_requests(args.harmful)
    gen = generation_kwargs()
    lines = []
    for side, alpha, extra in POINTS:
        lm = SteeredLM(pair="refusal", layer=20, alpha=alpha, batch_size=args.batch_size, **extra)
        requests = [Instance("generate_until", d, (d["prompt"], dict(gen)), i) for i, d in enumerate(docs)]
        replies = lm.generate_until(requests)
        name = f"{side}_a{alpha:g}"
        for i, (doc, reply) in enumerate(zip(docs, replies)):
            lines.append({"id": f"fresh-{args.split}/{name}/{i}", "kind": doc["kind"], "request": doc["prompt"],
                          "reply": reply, "side": side, "alpha": alpha, "direction": "v", "doc_key": doc["key"],
                          "split": args.split})
        print(f"{name}: {len(replies)} replies", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
    print(f"wrote {len(lines)} replies ({args.split}) to {args.out}")


if __name__ == "__main__":
    main()
