"""Re-score the generated replies a committed sweep kept, with the current behaviour classifier (no model run).

For every unit of a refusal generation task (``dsteer_refusal``, ``dsteer_refusal_balanced`` ...) in the sweep
folders given, each kept reply is scored again by :func:`dsteer_eval.metrics.refusal.score_reply` (the behaviour
classifier: noncomply_rate, refusal_rate, answer_rate, over_refusal_rate, n_off, n_degenerate) against its
document (the task's documents in the task's order, read from the shipped file), and

* ``per_doc.json`` gets the new per-document metrics (and ``scored_by``: the classifier's version);
* the unit's lm-eval ``results_*.json`` gets the new aggregates (a rate: the mean over the documents that
  have it and its standard error, as lm-eval's ``mean``; a count: the sum), with ``rescored_by`` beside them.

    python scripts/rescore_behaviour.py results/report_refusal_behaviour [more sweep folders]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsteer_eval.common.output_folder import atomic_write_text  # noqa: E402
from dsteer_eval.metrics.behaviour import VERSION  # noqa: E402
from dsteer_eval.metrics.refusal import balanced_order, score_reply  # noqa: E402

TASK_ORDER = {"dsteer_refusal": "file", "dsteer_refusal_balanced": "balanced"}


def documents(order: str) -> list[dict]:
    rows = [json.loads(line) for line in (ROOT / "tasks" / "refusal" / "refusal_eval.jsonl").open(encoding="utf-8")]
    if order == "file":
        return rows
    return [rows[i] for i in balanced_order([r["kind"] for r in rows])]


def aggregate(values: list) -> tuple[float, float] | None:
    xs = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not xs:
        return None
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return mean, sd / math.sqrt(len(xs))


def rescore_unit(unit: Path, task: str, docs: list[dict]) -> dict:
    per_doc_path = unit / "per_doc.json"
    found = json.loads(per_doc_path.read_text())
    block = found["tasks"][task]
    scored = []
    for doc_id, resp in zip(block["doc_id"], block["resps"]):
        reply = resp[0] if isinstance(resp, list) else resp
        reply = reply[0] if isinstance(reply, list) else reply
        scored.append(score_reply(docs[doc_id], reply))
    names = sorted({m for s in scored for m in s})
    block["metrics"] = {m: [s.get(m) for s in scored] for m in names}
    block["scored_by"] = VERSION
    atomic_write_text(per_doc_path, json.dumps(found) + "\n")
    for results_path in unit.glob("results_*.json"):
        results = json.loads(results_path.read_text())
        entry = {k: v for k, v in results["results"][task].items() if k in ("name", "alias", "sample_len")}
        for m in names:
            values = block["metrics"][m]
            if m.startswith("n_"):
                entry[f"{m},none"], entry[f"{m}_stderr,none"] = int(sum(v or 0 for v in values)), "N/A"
            else:
                agg = aggregate(values)
                if agg:
                    entry[f"{m},none"], entry[f"{m}_stderr,none"] = agg
        entry["rescored_by"] = f"scripts/rescore_behaviour.py ({VERSION})"
        results["results"][task] = entry
        atomic_write_text(results_path, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return {m: aggregate(block["metrics"][m]) for m in names if not m.startswith("n_")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", nargs="+")
    args = ap.parse_args()
    cache = {order: documents(order) for order in set(TASK_ORDER.values())}
    for sweep in args.sweeps:
        for unit in sorted(Path(sweep, "points").glob("*/*")):
            task = unit.name
            if task in TASK_ORDER and (unit / "per_doc.json").is_file():
                rates = rescore_unit(unit, task, cache[TASK_ORDER[task]])
                shown = ", ".join(f"{m} {v[0]:.3f}" for m, v in sorted(rates.items()) if v)
                print(f"{unit.relative_to(sweep)}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
