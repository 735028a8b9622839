"""The learned alternative to the behaviour rule that was tried and not adopted (docs/behaviour-labels.md):
a logistic-regression probe on the embedded model's hidden states, cross-validated on the labelled parts written
before heldout4 (heldout4 is never read here).

    .venv/bin/python scripts/behaviour_probe_cv.py     # ~20 min on 2 shared cores (the features), then seconds

Features: "User: <the request's last turn, last 400 characters>\\nAssistant:" + the reply through SmolLM2-135M-
Instruct (the embedded model, no adapter), the mean hidden state over the reply's tokens at layers 6, 12, 18, 24,
29 (one layer or several), optionally with the rule's group (one-hot, x3) appended; standardised; multinomial
logistic regression (class-balanced, C in 0.01 / 0.1 / 1) on the rate's groups (harmful: does not comply /
complies / off; harmless: answers / does not answer / off); 5 folds grouped by request. Prints precision and
recall of the rate's class per setting, beside the rule's on the same lines.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsteer_eval.metrics.behaviour import classify, last_turn, rate_group  # noqa: E402
from dsteer_eval.models.loading import load_model  # noqa: E402

LAYERS = (6, 12, 18, 24, 29)
HEAD = {"harmful": "noncomply", "harmless": "answer"}


def features(rows: list[dict]) -> np.ndarray:
    model, tok, _ = load_model(None, device="cpu")
    out = []
    with torch.no_grad():
        for r in rows:
            head = tok(f"User: {last_turn(r['request']).strip()[-400:]}\nAssistant:", add_special_tokens=False)["input_ids"]
            reply = tok(r["reply"], add_special_tokens=False)["input_ids"] or [tok.eos_token_id]
            states = model(torch.tensor([head + reply]), output_hidden_states=True).hidden_states
            out.append(torch.cat([states[layer][0, len(head):].mean(0) for layer in LAYERS]).numpy())
    return np.stack(out)


def precision_recall(gold, pred, cls) -> tuple[float, float]:
    tp = int(((gold == cls) & (pred == cls)).sum())
    return tp / max(int((pred == cls).sum()), 1), tp / max(int((gold == cls).sum()), 1)


def main() -> None:
    rows = [json.loads(x) for x in (ROOT / "tasks" / "refusal" / "behaviour_labels.jsonl").open(encoding="utf-8")]
    rows = [r for r in rows if r["split"] != "heldout4"]  # the validation part is never read here
    x_all = features(rows)
    d = x_all.shape[1] // len(LAYERS)
    for kind, head in HEAD.items():
        idx = [i for i, r in enumerate(rows) if r["kind"] == kind]
        gold = np.array([rate_group(kind, rows[i]["label"]) for i in idx])
        rule = np.array([rate_group(kind, classify(kind, rows[i]["request"], rows[i]["reply"])) for i in idx])
        groups = [rows[i]["doc_key"] for i in idx]
        print(f"{kind}: the rule (written on these lines) P {precision_recall(gold, rule, head)[0]:.3f} "
              f"R {precision_recall(gold, rule, head)[1]:.3f}")
        for layers in ([4], [3], [2], [1], [2, 3, 4], [0, 1, 2, 3, 4]):
            cols = np.concatenate([np.arange(k * d, (k + 1) * d) for k in layers])
            for c in (0.01, 0.1, 1.0):
                for stacked in (False, True):
                    x = x_all[np.array(idx)][:, cols]
                    if stacked:
                        x = np.hstack([x, 3.0 * np.array([[g == k for k in sorted(set(gold))] for g in rule], float)])
                    pred = np.empty(len(idx), dtype=object)
                    for train, test in GroupKFold(5).split(x, gold, groups):
                        fit = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000, class_weight="balanced"))
                        pred[test] = fit.fit(x[train], gold[train]).predict(x[test])
                    p, r = precision_recall(gold, pred, head)
                    print(f"  layers {[LAYERS[k] for k in layers]} C {c} with the rule's group {stacked}: P {p:.3f} R {r:.3f}")


if __name__ == "__main__":
    main()
