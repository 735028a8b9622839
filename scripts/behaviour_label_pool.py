"""The pool of replies to label by hand (issue 34): every reply a committed behaviour sweep generated at v̄'s
points (both sides, every α) and at two of its random directions per point, with the request it answers.

    .venv/bin/python scripts/behaviour_label_pool.py [--sweep results/report_refusal_behaviour] [--out results/behaviour_labels/pool.jsonl]
    # part 2: replies to 80 further documents, DPO and base at alpha 0 (lm_eval --model steered --tasks
    # dsteer_refusal_balanced --limit 120 --log_samples, with alpha=0 and alpha=0,peft=none), held out whole:
    .venv/bin/python scripts/behaviour_label_pool.py --samples dpo=DPO_SAMPLES.jsonl base=BASE_SAMPLES.jsonl \
        --out results/behaviour_labels/pool2.jsonl

Each line: id (sweep point / task / doc), kind (harmful | harmless, from the eval file), request (the dialogue
ending in "Assistant:"), reply (the generated text), side and α (from the point's name), doc_key. The labelled
set (tasks/refusal/behaviour_labels.jsonl) is this pool with a reader's label per line; ``split`` (dev |
heldout) is fixed here from a hash of the document key, so every reply to one request is on one side and the
held-out part is decided before anything is tuned.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dsteer_eval.metrics.refusal import balanced_order  # noqa: E402
TASK = "dsteer_refusal_balanced"
HELDOUT_SHARE = 0.35  # of the documents (by key hash): their replies are never looked at while tuning


def balanced_docs() -> list[dict]:
    """The eval documents in ``dsteer_refusal_balanced``'s order."""
    rows = [json.loads(line) for line in (REPO / "tasks" / "refusal" / "refusal_eval.jsonl").open()]
    return [rows[i] for i in balanced_order([r["kind"] for r in rows])]


def split_of(key: str) -> str:
    h = int(hashlib.sha256(f"behaviour-labels-v1:{key}".encode()).hexdigest()[:8], 16) / 2**32
    return "heldout" if h < HELDOUT_SHARE else "dev"


def point_facts(name: str) -> tuple[str, float, str]:
    """(side, α, direction) of a point folder: unsteered / base / L20_a-1 / base_L20_a1_random0 ..."""
    side = "base" if name.startswith("base") else "dpo"
    m = re.search(r"_a(-?[0-9.]+)", name)
    alpha = float(m.group(1)) if m else 0.0
    r = re.search(r"_random(\d+)$", name)
    return side, alpha, f"random:{r.group(1)}" if r else "v"


def from_samples(specs: list[str], skip_docs: int, split: str) -> list[dict]:
    """Replies from lm-eval ``--log_samples`` files of ``dsteer_refusal_balanced`` (``side=FILE`` at α = 0),
    documents from ``skip_docs`` on (the first ones are already in the pool): a later labelled part."""
    lines = []
    for spec in specs:
        side, path = spec.split("=", 1)
        for raw in open(path, encoding="utf-8"):
            sample = json.loads(raw)
            if sample["doc_id"] < skip_docs:
                continue
            doc = sample["doc"]
            reply = sample["resps"][0][0]
            lines.append({"id": f"gen-{side}-a0/{sample['doc_id']}", "kind": doc["kind"], "request": doc["prompt"],
                          "reply": reply, "side": side, "alpha": 0.0, "direction": "v", "doc_key": doc["key"],
                          "split": split})
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", default=str(REPO / "results" / "report_refusal_behaviour"))
    ap.add_argument("--randoms", default="0,1", help="random directions to include per steered point")
    ap.add_argument("--out", default=str(REPO / "results" / "behaviour_labels" / "pool.jsonl"))
    ap.add_argument("--samples", nargs="*", default=None,
                    help="side=samples_dsteer_refusal_balanced_*.jsonl (lm_eval --log_samples at alpha 0): a later "
                         "part of the pool from these instead of --sweep")
    ap.add_argument("--skip-docs", type=int, default=40, help="with --samples: documents before this are in part 1")
    ap.add_argument("--split", default="heldout2", help="with --samples: the split of every line")
    args = ap.parse_args()
    if args.samples:
        lines = from_samples(args.samples, args.skip_docs, args.split)
        with open(args.out, "w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")
        print(f"wrote {len(lines)} replies ({args.split}) to {args.out}")
        return
    docs = balanced_docs()
    keep_random = {f"random:{i}" for i in args.randoms.split(",") if i}
    lines = []
    for point in sorted(Path(args.sweep, "points").iterdir()):
        side, alpha, direction = point_facts(point.name)
        if direction != "v" and direction not in keep_random:
            continue
        per_doc = json.loads((point / TASK / "per_doc.json").read_text())["tasks"][TASK]
        for doc_id, resp in zip(per_doc["doc_id"], per_doc["resps"]):
            doc = docs[doc_id]
            reply = resp[0] if isinstance(resp, list) else resp
            reply = reply[0] if isinstance(reply, list) else reply
            lines.append({"id": f"{Path(args.sweep).name}/{point.name}/{doc_id}", "kind": doc["kind"],
                          "request": doc["prompt"], "reply": reply, "side": side, "alpha": alpha,
                          "direction": direction, "doc_key": doc["key"], "split": split_of(doc["key"])})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
    n_held = sum(line["split"] == "heldout" for line in lines)
    print(f"wrote {len(lines)} replies ({n_held} held out) to {args.out}")


if __name__ == "__main__":
    main()
