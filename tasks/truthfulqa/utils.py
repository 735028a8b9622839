"""TruthfulQA minis: built-in prompts and scoring (see dsteer_eval.metrics.truthfulqa)."""

from lm_eval.tasks.truthfulqa.utils import process_docs_gen, process_results_gen, process_results_mc2  # noqa: F401

from dsteer_eval.metrics.truthfulqa import check_docs, gen_doc_to_text, mc_doc_to_text  # noqa: F401


def process_docs_mc(dataset):
    return check_docs(dataset, "multiple_choice")


def process_docs_gen_checked(dataset):
    return process_docs_gen(check_docs(dataset, "generation"))
