"""TruthfulQA minis: built-in prompts and scoring (see dsteer_eval.metrics.truthfulqa)."""

from lm_eval.tasks.truthfulqa.utils import process_docs_gen, process_results_gen  # noqa: F401

from dsteer_eval.metrics.truthfulqa import (  # noqa: F401
    check_docs,
    gen_doc_to_text,
    mc_doc_to_text,
    process_results_mc1,  # the built-in scores, plus n_nonfinite: NaN/inf log-likelihoods are never scored
    process_results_mc2,
)


def process_docs_mc(dataset):
    return check_docs(dataset, "multiple_choice")


def process_docs_gen_checked(dataset):
    return process_docs_gen(check_docs(dataset, "generation"))
