"""The ``*_mini`` TruthfulQA tasks reuse lm-eval's built-in ``truthfulqa_*`` tasks.

Prompts are rendered from the built-in YAML's own ``doc_to_text`` template and the
scoring functions are the built-in ``lm_eval.tasks.truthfulqa.utils`` ones, so a
mini task differs from its built-in twin only in its data (a shipped sample in the
``truthful_qa`` schema).  ``truthfulqa_gen``'s BLEU/ROUGE are sacrebleu and
rouge-score, both local: no hub access is needed to score.

The multiple-choice scorers add one guard to the built-in ones: a question whose
log-likelihoods are NaN/inf is not scored (argmax over NaN picks choice 0, the
true answer) but counted in ``n_nonfinite``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from dsteer_eval.metrics.hh_preference import all_finite, loglikelihoods
from importlib.util import find_spec
from pathlib import Path

REQUIRED = {
    "multiple_choice": ("question", "mc1_targets", "mc2_targets"),
    "generation": ("question", "best_answer", "correct_answers", "incorrect_answers"),
}


def builtin_yaml(task: str) -> Path:
    """Path of lm-eval's own YAML for ``task`` (e.g. ``truthfulqa_mc1``)."""
    root = Path(list(find_spec("lm_eval.tasks").submodule_search_locations)[0])
    return root / "truthfulqa" / f"{task}.yaml"


@lru_cache(maxsize=None)
def builtin_config(task: str) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml  # deferred: lm-eval internals load only when this path runs

    return load_yaml(builtin_yaml(task), resolve_func=False)


def _render(task: str, doc) -> str:
    from lm_eval.utils import apply_template  # deferred: lm-eval internals load only when this path runs

    return apply_template(builtin_config(task)["doc_to_text"], doc)


def mc_doc_to_text(doc) -> str:
    return _render("truthfulqa_mc1", doc)


def gen_doc_to_text(doc) -> str:
    return _render("truthfulqa_gen", doc)


def check_docs(dataset, schema: str):
    """Stop with the row and field when the sample does not follow the ``truthful_qa`` schema."""
    if len(dataset) == 0:
        raise ValueError("the TruthfulQA sample is empty")
    for index, doc in enumerate(dataset):
        for field in REQUIRED[schema]:
            if doc.get(field) in (None, "", []):
                raise ValueError(f"TruthfulQA row {index}: missing or empty field {field!r} ({schema} schema)")
        if schema == "multiple_choice":
            for field in ("mc1_targets", "mc2_targets"):
                targets = doc[field]
                choices, labels = targets.get("choices") or [], targets.get("labels") or []
                if not choices or len(choices) != len(labels) or any(not str(c).strip() for c in choices):
                    raise ValueError(
                        f"TruthfulQA row {index}: {field} needs non-empty choices with one label each"
                    )
                if 1 not in labels:
                    raise ValueError(f"TruthfulQA row {index}: {field} has no correct choice (label 1)")
    return dataset


def process_results_mc1(doc, results) -> dict:
    """lm-eval's multiple-choice ``acc`` (argmax of the log-likelihoods is choice 0, the true answer),
    or ``n_nonfinite`` for a question with a NaN/inf log-likelihood."""
    lls = loglikelihoods(results)
    if not all_finite(lls):
        return {"n_nonfinite": 1}
    return {"acc": 1.0 if int(np.argmax(lls)) == 0 else 0.0, "n_nonfinite": 0}


def process_results_mc2(doc, results) -> dict:
    """The built-in ``truthfulqa_mc2`` score (normalised probability mass on the true answers), or
    ``n_nonfinite`` for a question with a NaN/inf log-likelihood.

    Where every choice is so unlikely that exp() underflows to 0 (the built-in then gives 0/0 = NaN),
    the same mass is computed as a softmax shifted by the largest log-likelihood."""
    from lm_eval.tasks.truthfulqa.utils import process_results_mc2 as builtin  # deferred: lm-eval internals load only when this path runs

    lls = loglikelihoods(results)
    if not all_finite(lls):
        return {"n_nonfinite": 1}
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        out = dict(builtin(doc, results))
    if not math.isfinite(float(out["acc"])):
        probs = np.exp(lls - lls.max())
        labels = np.array(doc["mc2_targets"]["labels"])
        out["acc"] = float(probs[labels == 1].sum() / probs.sum())
    out["n_nonfinite"] = 0
    return out
