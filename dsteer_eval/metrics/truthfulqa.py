"""The ``*_mini`` TruthfulQA tasks reuse lm-eval's built-in ``truthfulqa_*`` tasks.

Prompts are rendered from the built-in YAML's own ``doc_to_text`` template and the
scoring functions are the built-in ``lm_eval.tasks.truthfulqa.utils`` ones, so a
mini task differs from its built-in twin only in its data (a shipped sample in the
``truthful_qa`` schema).  ``truthfulqa_gen``'s BLEU/ROUGE are sacrebleu and
rouge-score, both local: no hub access is needed to score.
"""

from __future__ import annotations

from functools import lru_cache
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
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(builtin_yaml(task), resolve_func=False)


def _render(task: str, doc) -> str:
    from lm_eval.utils import apply_template

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
