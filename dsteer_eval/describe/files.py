"""``dsteer-eval info FILE``: what a dsteer-eval output is, its key facts, and how it was made.

:func:`describe` reads a vector file, a ``dpo_card.json``, ``probe_report.json`` or ``sweep.json``
(or a folder holding one: a train-dpo adapter, a probe output, a sweep output) into one JSON-able
record ``{"kind", "path", "facts", "provenance", "provenance_error", "record"}``; :func:`render`
prints it for people.  ``record`` is the file's own content (a vector file: its metadata).
Anything else is refused with :class:`InfoError`, which names the file and what is accepted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dsteer_eval.common.provenance import SINCE, read
from dsteer_eval.dpo.training import CARD_FORMAT
from dsteer_eval.probes.report import FORMAT as PROBE_FORMAT
from dsteer_eval.sweep.runner import FORMAT as SWEEP_FORMAT
from dsteer_eval.vectors.convert import earlier_conversions
from dsteer_eval.vectors.formats import read_any

ACCEPTS = ("dsteer-eval info accepts a vector file (.safetensors, .gguf, .pt), a dpo_card.json, "
           "probe_report.json or sweep.json, or a folder holding one of them (a train-dpo adapter, "
           "a probe --out folder, a sweep --output folder)")
RECORD_NAMES = ("dpo_card.json", "sweep.json", "probe_report.json")  # looked for in a folder, in this order


class InfoError(ValueError):
    """A path ``info`` cannot describe; the message names it and what ``info`` accepts."""


# ------------------------------------------------------------------ reading
def _json_kinds() -> dict:
    """``{format: (kind, facts function)}`` of the JSON outputs."""

    return {CARD_FORMAT: ("dpo-card", _card_facts), PROBE_FORMAT: ("probe-report", _probe_facts),
            SWEEP_FORMAT: ("sweep", _sweep_facts)}


def _vector_reader():
    return read_any


def _in_folder(folder: Path) -> Path:
    for name in RECORD_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise InfoError(f"{folder}: a folder without {', '.join(RECORD_NAMES)}; {ACCEPTS}")


def _provenance(value) -> tuple[dict | None, str | None]:
    """``(record, None)``, ``(None, None)`` when there is none, or ``(None, why it is unreadable)``."""

    try:
        return read(value), None
    except ValueError as exc:
        return None, str(exc)


def describe(path) -> dict:
    """The record of the output at ``path``; raises :class:`InfoError` for anything else."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InfoError(f"{path}: no such file or folder; {ACCEPTS}")
    if path.is_dir():
        path = _in_folder(path)
    if not os.access(path, os.R_OK):
        raise InfoError(f"{path}: cannot be read (permission denied); {ACCEPTS}")
    return _describe_json(path) if path.suffix.lower() == ".json" else _describe_vectors(path)


def _describe_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InfoError(f"{path}: not valid JSON ({exc}); {ACCEPTS}") from None
    fmt = doc.get("format") if isinstance(doc, dict) else None
    kinds = _json_kinds()
    if fmt not in kinds:
        raise InfoError(f"{path}: JSON of format {fmt!r}, not a dsteer-eval output info knows "
                        f"({', '.join(sorted(kinds))}); {ACCEPTS}")
    kind, facts = kinds[fmt]
    record, error = _provenance(doc.get("provenance"))
    return {"kind": kind, "path": str(path), "facts": facts(doc), "provenance": record,
            "provenance_error": error, "record": doc}


def _describe_vectors(path: Path) -> dict:
    try:
        vf = _vector_reader()(path, argument="FILE")
    except (ValueError, OSError) as exc:  # VectorFileError is a ValueError
        raise InfoError(f"{path}: not a file info can read ({exc}); {ACCEPTS}") from None
    meta = dict(vf.metadata)
    record, error = _provenance(meta.get("provenance"))
    return {"kind": "vectors", "path": str(path), "facts": _vector_facts(vf), "provenance": record,
            "provenance_error": error, "record": meta}


# ------------------------------------------------------------------ facts
_VECTOR_KEYS = ("model_id", "model_type", "hidden_size", "num_layers", "vocab_size", "method", "n_examples",
                "default_layer", "data", "dpo", "source_format", "source_layers", "package_version", "created")


def _vector_facts(vf) -> dict:
    sites = sorted(vf.vectors)
    facts = {"format": getattr(vf, "format", "safetensors"), "sites": sites,
             "hidden_size": int(next(iter(vf.vectors.values())).shape[0]),
             "norms": {str(s): round(float(vf.vectors[s].float().norm()), 6) for s in sites}}
    facts.update({k: vf.metadata[k] for k in _VECTOR_KEYS if k in vf.metadata and k != "hidden_size"})
    if "conversion" in vf.metadata:

        *earlier, last = earlier_conversions(vf.metadata)
        facts["converted_from"] = _conversion_text(last)
        if earlier:
            facts["earlier_conversions"] = [_conversion_text(record) for record in earlier]
    return facts


def _conversion_text(record) -> str:
    if not isinstance(record, dict):
        return str(record)
    return f"{record.get('from')} ({record.get('from_format')}, sha256 {record.get('from_sha256')})"


def _get(doc: dict, *keys):
    for key in keys:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


def _object(value) -> dict:
    return value if isinstance(value, dict) else {}


def _count(value) -> int | None:
    """How many entries a list field holds (None: the field is not a list)."""
    return len(value) if isinstance(value, list) else (0 if value is None else None)


def _card_facts(card: dict) -> dict:
    return {
        "kind": card.get("kind"),
        "base_model": card.get("base_model"),
        "data": _get(card, "data", "source"),
        "data_sha256": _get(card, "data", "sha256"),
        "pairs": {"train": _get(card, "data", "pairs_train"), "eval": _get(card, "data", "pairs_eval")},
        "part": _get(card, "data", "part"),
        "steps_done": card.get("steps_done"),
        "beta": _get(card, "hyperparameters", "beta"),
        "learning_rate": _get(card, "hyperparameters", "learning_rate"),
        "seed": _get(card, "hyperparameters", "seed"),
        "eval_reward_accuracy": _get(card, "metrics", "eval", "reward_accuracy"),
        "gate_passed": _get(card, "gate", "passed"),
        "heldout": {part: _get(entry, "provenance", "command") or _get(entry, "command")
                    for part, entry in sorted(_object(card.get("heldout")).items())},
        "created": card.get("created"),
        "recreate_command": card.get("command"),
    }


def _probe_facts(report: dict) -> dict:
    return {
        "models": report.get("models"),
        "data": _get(report, "data", "source"),
        "prompts": _get(report, "data", "prompts"),
        "pairs": _get(report, "data", "pairs"),
        "vector": _get(report, "vector", "source"),
        "layer": report.get("layer"),
        "num_layers": report.get("num_layers"),
        "verdicts": f"{_get(report, 'headline', 'verdicts_supported')} of "
                    f"{_get(report, 'headline', 'verdicts_total')} supported",
        "package_version": report.get("package_version"),
        "created": report.get("created"),
    }


def _sweep_facts(sweep: dict) -> dict:
    return {
        "model_args": _get(sweep, "settings", "model_args"),
        "vector": sweep.get("vector"),
        "vector_sha256": _get(sweep, "settings", "vector_sha256"),
        "layers": sweep.get("layers"),
        "alphas": sweep.get("alphas"),
        "tasks": sweep.get("tasks"),
        "points": _count(sweep.get("points")),
        "limit": _get(sweep, "settings", "limit"),
        "runs_resumed": _count(sweep.get("earlier_provenance")),
        "package_version": sweep.get("package_version"),
        "updated": sweep.get("updated"),
    }


# ------------------------------------------------------------------ printing
_TITLES = {"vectors": "steering vectors", "dpo-card": "DPO card (train-dpo)", "probe-report": "probe report",
           "sweep": "sweep record"}


def _printable(text) -> str:
    """``text`` with control and format characters (terminal escape sequences, carriage returns, bidi
    overrides) written as Python escapes (``\\x1b``); printable unicode is kept. Everything ``render``
    prints goes through it: metadata is whatever the file's writer put there."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def _text(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{_printable(k)}: {_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    return _printable(value)


def _lines(pairs) -> list[str]:
    return [f"  {_printable(label):16s} {_text(value)}" for label, value in pairs if value not in (None, "", [], {})]


def _data_text(entry: dict) -> str:
    if entry.get("sha256") is None:
        return f"{entry.get('path')} ({entry.get('note', 'no hash')})"
    size = f", {entry['bytes']} bytes" if "bytes" in entry else ""
    return f"{entry.get('path')} (sha256 {entry['sha256']}{size})"


def render_provenance(record: dict | None, error: str | None = None) -> list[str]:
    """Lines of a provenance record (or why there is none)."""

    if error:
        return [f"provenance: unreadable ({_printable(error)})"]
    if record is None:
        return [f"no provenance recorded (file made before dsteer-eval {SINCE} began recording provenance, "
                f"or by another tool)"]
    git = record.get("git")
    where = "not run from a git checkout" if not git else \
        f"git {git.get('commit')}" + {True: " (uncommitted changes)", False: "", None: ""}[git.get("dirty")]
    pairs = [("dsteer-eval", f"{record.get('package_version')}, {where}"), ("command", record.get("command")),
             ("created", record.get("created")), ("python", record.get("python")),
             ("libraries", {k: v for k, v in (record.get("versions") or {}).items() if v})]
    pairs += [(f"data {d['role']}" if d.get("role") else "data", _data_text(d)) for d in record.get("data") or []]
    pairs += [(f"model {m.get('role')}", f"{m.get('path_or_id')}: {_text(m.get('fingerprint') or {})}")
              for m in record.get("models") or []]
    pairs.append(("seeds", record.get("seeds")))
    return ["provenance", *_lines(pairs)]


def render(found: dict) -> str:
    head = _printable(f"{found['path']}: {_TITLES.get(found['kind'], found['kind'])}")
    return "\n".join([head, *_lines(found["facts"].items()),
                      *render_provenance(found["provenance"], found.get("provenance_error"))])
