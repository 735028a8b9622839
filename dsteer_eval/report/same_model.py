"""Whether two sweeps ran the same model: the identities their ``sweep.json`` records.

``dsteer-eval sweep`` records the content of the model files its --model-args name (``settings.contents``:
``pretrained=`` and ``peft=``, the shipped adapter included; cheap sha256, :mod:`dsteer_eval.sweep.fingerprint`),
the full adapter weights' sha256 in its provenance (``provenance.models``, :mod:`dsteer_eval.models.identity`),
and the model args themselves (``dtype=``; default ``auto``). The prompting baseline of ``report --prompting``
is divided by the main sweep's gap, so it must come from the same pretrained model, adapter and dtype.
"""

from __future__ import annotations

from dsteer_eval.report.sweep_data import SweepData


def _args(data: SweepData) -> dict:
    text = str(data.settings.get("model_args") or "")
    return {k.strip(): v.strip() for k, _, v in (kv.partition("=") for kv in text.split(",")) if k.strip()}


def _content(data: SweepData, key: str):
    contents = data.settings.get("contents")
    entry = contents.get(key) if isinstance(contents, dict) else None
    return entry if isinstance(entry, dict) else None


def _fingerprint(data: SweepData, role: str, field: str):
    for model in data.provenance.get("models") or []:
        if isinstance(model, dict) and model.get("role") == role:
            value = (model.get("fingerprint") or {}).get(field)
            return value if isinstance(value, str) else None
    return None


def recorded(data: SweepData) -> bool:
    """Whether the sweep records its model files' contents at all (sweeps since fingerprint version 2)."""
    return isinstance(data.settings.get("contents"), dict) or bool(data.provenance.get("models"))


def _hash_or_path(entry) -> tuple[str, str] | None:
    if not entry:
        return None
    if isinstance(entry.get("sha256"), str):
        return "sha256", entry["sha256"]
    return ("path", str(entry["path"])) if entry.get("path") else None


def _differ(name: str, kind: str, there: str, here: str) -> str:
    if kind == "sha256":
        return f"{name}: sha256 {there[:16]} there, {here[:16]} here"
    return f"{name}: {there} there, {here} here"


def model_differences(there: SweepData, here: SweepData) -> list[str]:
    """What differs between the models of two sweeps (``"what: X there, Y here"``), [] when the same or
    not recorded."""
    out = []
    if recorded(there) and recorded(here):
        for key, name in (("pretrained=", "pretrained contents"), ("peft=", "adapter contents")):
            a, b = _content(there, key), _content(here, key)
            if key == "peft=" and (a is None) != (b is None) and isinstance(there.settings.get("contents"), dict) \
                    and isinstance(here.settings.get("contents"), dict):
                out.append(f"adapter: {(a or {}).get('path') or 'none'} there, {(b or {}).get('path') or 'none'} here")
                continue
            a, b = _hash_or_path(a), _hash_or_path(b)
            if a and b and a[0] == b[0] and a[1] != b[1]:
                out.append(_differ(name, a[0], a[1], b[1]))
        for role, field, name in (("base", "content_digest", "pretrained weights"),
                                  ("adapter", "adapter_sha256", "adapter weights")):
            a, b = _fingerprint(there, role, field), _fingerprint(here, role, field)
            if a and b and a != b and not any(o.startswith(name.split()[0]) for o in out):
                out.append(_differ(name, "sha256", a, b))
    dtype_there, dtype_here = (str(_args(d).get("dtype") or "auto").lower() for d in (there, here))
    if dtype_there != dtype_here:
        out.append(f"dtype: {dtype_there} there, {dtype_here} here")
    return out


def check_same_model(prompted: SweepData, data: SweepData, flag: str = "--prompting") -> None:
    """Refuse ``prompted`` when its recorded model differs from ``data``'s, naming the flag and what differs."""
    differ = model_differences(prompted, data)
    if differ:
        raise ValueError(f"{flag} {prompted.folder}: not the same model as {data.folder} ({'; '.join(differ)}); the "
                         f"prompting baseline divides by this pair's gap, so run it on the same model: the same "
                         f"--model-args (pretrained, peft, dtype)")
