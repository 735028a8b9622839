"""HH preference tasks: the logic lives in :mod:`dsteer_eval.metrics.hh_preference`."""

from dsteer_eval.metrics.hh_preference import process_docs, process_results  # noqa: F401
