"""One file-level split of the preference data into train / vector / probe / eval parts.

Every row goes to exactly one part, decided by its prompt alone, so that the same
row lands in the same part in every file, every run and every command:

* the **key** of a prompt (:func:`prompt_key`) is the text of its *first* Human turn
  (HH dialogues ``"\\n\\nHuman: ... \\n\\nAssistant: ..."``), or the whole text when it
  has no Human turn (a TruthfulQA question, a ``prompt`` field).  Multi-turn HH rows
  that open with the same request therefore share one part, and a TruthfulQA
  question lands in the same part as ``"\\n\\nHuman: {question}\\n\\nAssistant:"``.
  The key is normalised: Unicode NFKC, typographic quotes as ASCII, lower case,
  runs of white space as one space, stripped;
* the key's **bucket** is ``sha256("dsteer-split-v1\\0" + key)``, its first 8 bytes
  read as a big-endian integer / 2**64, a number in [0, 1);
* the **part** is the first of ``train`` [0, 0.6), ``vector`` [0.6, 0.7),
  ``probe`` [0.7, 0.8), ``eval`` [0.8, 1) holding the bucket.

Who reads which part: ``train-dpo --part train`` trains (and measures held-out
rewards on ``eval``), ``extract --part vector`` extracts v-bar, ``probe`` reads
``probe``, and the shipped real-row tasks (``dsteer_offline``) hold ``eval`` rows
only.  The probe and eval parts are never trained on.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter

SPLIT_SEED = "dsteer-split-v1"
FRACTIONS = {"train": 0.6, "vector": 0.1, "probe": 0.1, "eval": 0.2}
PARTS = tuple(FRACTIONS)

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
                         "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"'})
_SPACE = re.compile(r"\s+")
_TURN = re.compile(r"\n\nAssistant:|\n\nHuman:")


def normalise(text: str) -> str:
    """NFKC, ASCII quotes, lower case, one space for any run of white space, stripped."""
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES).lower()
    return _SPACE.sub(" ", text).strip()


def first_human_turn(text: str) -> str | None:
    """The text of the first ``Human:`` turn of an HH dialogue, or ``None`` if it has none."""
    if "Human:" not in text:
        return None
    start = text.index("\n\nHuman:") + len("\n\nHuman:") if "\n\nHuman:" in text else text.index("Human:") + 6
    end = _TURN.search(text, start)
    return text[start:end.start() if end else len(text)]


def prompt_key(text: str) -> str:
    """The normalised key a prompt is split by: its first Human turn, else the whole text."""
    if not isinstance(text, str):
        raise TypeError(f"a prompt key needs a string, got {type(text).__name__}")
    turn = first_human_turn(text)
    return normalise(turn if turn is not None else text)


def bucket(key: str) -> float:
    """A uniform number in [0, 1) from the seeded sha256 of an (already normalised) key."""
    digest = hashlib.sha256(f"{SPLIT_SEED}\0{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def part_of(text: str) -> str:
    """``train`` | ``vector`` | ``probe`` | ``eval`` for a prompt (HH dialogue, question or key)."""
    value, edge = bucket(prompt_key(text)), 0.0
    for name, share in FRACTIONS.items():
        edge += share
        if value < edge:
            return name
    return PARTS[-1]  # float rounding at the top edge


def check_part(part: str | None) -> str | None:
    """``None`` for all rows (``None``, ``""`` or ``"all"``), else a known part name."""
    if part in (None, "", "all"):
        return None
    if part not in PARTS:
        raise ValueError(f"unknown data part {part!r}; use one of {', '.join(PARTS)} or all")
    return part


def select_part(pairs, part: str | None):
    """The pairs (anything with a ``.prompt``, or dicts with ``"prompt"``) whose prompt is in ``part``.

    A :class:`~dsteer_eval.data.preference_pairs.PairSet` stays one, with ``part`` set and
    ``other_parts`` counting the rows left out.  ``part=None`` returns ``pairs`` as is.
    """
    part = check_part(part)
    if part is None:
        return pairs
    keep, other = [], 0
    for pair in pairs:
        prompt = pair["prompt"] if isinstance(pair, dict) else pair.prompt
        if part_of(prompt) == part:
            keep.append(pair)
        else:
            other += 1
    if hasattr(pairs, "restricted"):  # a PairSet keeps its source and skip counts
        return pairs.restricted(keep, part=part, other_parts=other)
    return keep


def count_parts(prompts) -> dict:
    """``{part: rows}`` for an iterable of prompts, in the order of :data:`PARTS`."""
    counts = Counter(part_of(p) for p in prompts)
    return {name: counts.get(name, 0) for name in PARTS}
