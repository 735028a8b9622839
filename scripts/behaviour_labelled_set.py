"""Join the pools of replies with the readers' labels into the shipped labelled set
(tasks/refusal/behaviour_labels.jsonl; its guide: docs/behaviour-labels.md).

    python scripts/behaviour_labelled_set.py

Part 1 (results/behaviour_labels/pool.jsonl, reader 1): 440 replies of the committed behaviour sweep, split by
request into ``dev`` (read while the rules were written) and ``heldout1`` (scored once, for rules-v1, and read
for rules-v2). Part 2 (pool2.jsonl, reader 2, labelled without seeing part 1 or the classifier): 160 replies
to 80 further requests at α = 0 on both sides, ``heldout2`` (scored once, for rules-v2; read for rules-v3).
Part 3 (pool3.jsonl, reader 3): 80 replies to 40 further harmful requests at α = 0 on both sides, ``heldout3``:
labelled after rules-v3 was frozen, never read while any rule was written.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LABELS = ROOT / "results" / "behaviour_labels"
OUT = ROOT / "tasks" / "refusal" / "behaviour_labels.jsonl"
PARTS = (("pool.jsonl", "labels_reader1.jsonl", "reader1", {"dev": "dev", "heldout": "heldout1"}),
         ("pool2.jsonl", "labels2_reader2.jsonl", "reader2", {"heldout2": "heldout2"}),
         ("pool3.jsonl", "labels3_reader3.jsonl", "reader3", {"heldout3": "heldout3"}))
FIELDS = ("id", "kind", "request", "reply", "label", "benign_request", "note", "split", "labeller", "side", "alpha",
          "direction", "doc_key")


def main() -> None:
    lines = []
    for pool, labels, reader, splits in PARTS:
        rows = [json.loads(x) for x in (LABELS / pool).open(encoding="utf-8")]
        marks = {m["id"]: m for m in (json.loads(x) for x in (LABELS / labels).open(encoding="utf-8"))}
        missing = [r["id"] for r in rows if r["id"] not in marks]
        if missing:
            raise SystemExit(f"{labels}: {len(missing)} replies of {pool} have no label (first: {missing[0]})")
        for r in rows:
            m = marks[r["id"]]
            line = {**r, "label": m["label"], "benign_request": m["benign_request"], "note": m["note"],
                    "split": splits[r["split"]], "labeller": reader}
            lines.append({k: line[k] for k in FIELDS})
    OUT.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    print(f"wrote {len(lines)} labelled replies to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
