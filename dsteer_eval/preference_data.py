"""Preference pairs in the Anthropic HH-RLHF schema: read, split and check them.

A pair is two whole dialogues (``chosen``, ``rejected``) that share every turn
but the final assistant reply.  :func:`split_pair` returns the shared prompt
(up to and including the final ``Assistant:``) and the two replies.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

SEPARATOR = "\n\nAssistant:"


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str


def split_pair(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """``(prompt, chosen_reply, rejected_reply)``, or ``None`` if the prompts differ."""
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise ValueError("a preference pair needs string fields 'chosen' and 'rejected'")
    cut_c, cut_r = chosen.rfind(SEPARATOR), rejected.rfind(SEPARATOR)
    if cut_c < 0 or cut_r < 0:
        raise ValueError("an HH dialogue must contain a final '\\n\\nAssistant:' turn")
    prompt = chosen[: cut_c + len(SEPARATOR)]
    if rejected[: cut_r + len(SEPARATOR)] != prompt:
        return None
    return prompt, chosen[cut_c + len(SEPARATOR):], rejected[cut_r + len(SEPARATOR):]


def read_pairs(path: str | Path, *, limit: int | None = None) -> list[PreferencePair]:
    """Read a JSONL(.gz) of ``chosen``/``rejected`` dialogues or ``prompt``/``chosen``/``rejected``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preference data {path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    pairs: list[PreferencePair] = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(doc, dict) or "chosen" not in doc or "rejected" not in doc:
                raise ValueError(f"{path}:{lineno}: needs fields 'chosen' and 'rejected'")
            if "prompt" in doc:
                pair = PreferencePair(doc["prompt"], doc["chosen"], doc["rejected"])
            else:
                split = split_pair(doc["chosen"], doc["rejected"])
                if split is None:
                    raise ValueError(f"{path}:{lineno}: chosen and rejected have different prompts")
                pair = PreferencePair(*split)
            if not pair.chosen.strip() or not pair.rejected.strip():
                raise ValueError(f"{path}:{lineno}: empty reply")
            pairs.append(pair)
            if limit is not None and len(pairs) >= limit:
                break
    if not pairs:
        raise ValueError(f"preference data {path} holds no pairs")
    return pairs
