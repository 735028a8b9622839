"""Join the pools of replies with the readers' labels into the shipped labelled set
(tasks/refusal/behaviour_labels.jsonl; its guide: docs/behaviour-labels.md).

    python scripts/behaviour_labelled_set.py

Part 1 (results/behaviour_labels/pool.jsonl, reader 1): 440 replies of the committed behaviour sweep, split by
request into ``dev`` (read while the rules were written) and ``heldout1`` (scored once, for rules-v1, and read
for rules-v2). Part 2 (pool2.jsonl, reader 2, labelled without seeing part 1 or the classifier): 160 replies
to 80 further requests at α = 0 on both sides, ``heldout2`` (scored once, for rules-v2; read for rules-v3).
Part 3 (pool3.jsonl, reader 3): 80 replies to 40 further harmful requests at α = 0 on both sides, ``heldout3``:
labelled after rules-v3 was frozen, never read while any rule was written (scored once for rules-v3; read for v4).
Part 4 (pool4.jsonl, scripts/behaviour_fresh_pool.py, drawn after rules-v4 was frozen): replies to 40 further
harmful eval requests and the 22 harmless probe-part questions at DPO/base α = 0, DPO − v̄ and base + v̄,
``heldout4``. Readers 4a and 4b labelled every reply independently; reader 4c, seeing neither's label, labelled
the replies they disagree on; the label is the majority (4c's when all three differ). Every reader's label is
kept in ``readers``; their agreement with each other is the ceiling a classifier is read against.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LABELS = ROOT / "results" / "behaviour_labels"
OUT = ROOT / "tasks" / "refusal" / "behaviour_labels.jsonl"
# (pool, ((label file, reader), ...), split map, adjudicating reader's file or None)
PARTS = (("pool.jsonl", (("labels_reader1.jsonl", "reader1"),), {"dev": "dev", "heldout": "heldout1"}, None),
         ("pool2.jsonl", (("labels2_reader2.jsonl", "reader2"),), {"heldout2": "heldout2"}, None),
         ("pool3.jsonl", (("labels3_reader3.jsonl", "reader3"),), {"heldout3": "heldout3"}, None),
         ("pool4.jsonl", (("labels4_reader4a.jsonl", "reader4a"), ("labels4_reader4b.jsonl", "reader4b")),
          {"heldout4": "heldout4"}, ("labels4_reader4c.jsonl", "reader4c")))
FIELDS = ("id", "kind", "request", "reply", "label", "benign_request", "note", "split", "labeller", "readers", "side",
          "alpha", "direction", "doc_key")


def read_marks(name: str) -> dict:
    return {m["id"]: m for m in (json.loads(x) for x in (LABELS / name).open(encoding="utf-8") if x.strip())}


def decide(ids: list[str], readers: list[tuple[str, dict]], third: tuple[str, dict] | None) -> dict:
    """``{id: (label, labeller, {reader: label}, mark)}``: one reader's label, or the majority of two readers and,
    where they differ, a third (the third's label when all three differ)."""
    out = {}
    for i in ids:
        got = {reader: marks[i] for reader, marks in readers}
        labels = {reader: m["label"] for reader, m in got.items()}
        first = next(iter(got.values()))
        if len(set(labels.values())) == 1:
            out[i] = (first["label"], "+".join(labels), labels, first)
            continue
        if third is None or i not in third[1]:
            raise SystemExit(f"{i}: readers {labels} disagree and {third[0] if third else 'no third reader'} has no label")
        mark = third[1][i]
        labels[third[0]] = mark["label"]
        winner = next((x for x in labels.values() if list(labels.values()).count(x) >= 2), mark["label"])
        agreeing = [r for r, x in labels.items() if x == winner]
        source = next((got[r] for r in agreeing if r in got), mark)
        out[i] = (winner, "+".join(agreeing), labels, source)
    return out


def main() -> None:
    lines = []
    for pool, files, splits, adjudicator in PARTS:
        if not (LABELS / pool).is_file():
            continue
        rows = [json.loads(x) for x in (LABELS / pool).open(encoding="utf-8")]
        readers = [(reader, read_marks(name)) for name, reader in files]
        for (name, _), (_, marks) in zip(files, readers):
            missing = [r["id"] for r in rows if r["id"] not in marks]
            if missing:
                raise SystemExit(f"{name}: {len(missing)} replies of {pool} have no label (first: {missing[0]})")
        third = (adjudicator[1], read_marks(adjudicator[0])) if adjudicator and (LABELS / adjudicator[0]).is_file() \
            else None
        decided = decide([r["id"] for r in rows], readers, third)
        for r in rows:
            label, labeller, labels, mark = decided[r["id"]]
            line = {**r, "label": label, "benign_request": mark["benign_request"], "note": mark["note"],
                    "split": splits[r["split"]], "labeller": labeller, "readers": labels}
            lines.append({k: line[k] for k in FIELDS})
    OUT.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    print(f"wrote {len(lines)} labelled replies to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
