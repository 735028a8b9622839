"""Preference pairs in the Anthropic HH-RLHF schema: read, split and check them.

A pair is two whole dialogues (``chosen``, ``rejected``) that share every turn
but the final assistant reply.  :func:`split_pair` returns the shared prompt
(up to and including the final ``Assistant:``) and the two replies.  Rows may
also come as explicit ``prompt``/``chosen``/``rejected`` strings.

:func:`load_pairs` reads a local JSONL(.gz) file or a hub dataset
(``Anthropic/hh-rlhf`` with ``data_dir="harmless-base"``).  Real HH data holds
a few unusable rows (an empty reply, two dialogues whose earlier turns differ);
by default those are skipped and counted in :attr:`PairSet.skipped`, and with
``strict=True`` the first one is an error naming the row.

``part=`` keeps only the rows of one part of the file-level split
(:mod:`dsteer_eval.data.splits`); :func:`left_truncate` cuts a prompt that is too long
to its final whole turns (or, if the last turn alone is too long, its final tokens).
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from dsteer_eval.data.splits import check_part, part_of

SEPARATOR = "\n\nAssistant:"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str


class PairSet(list):
    """A list of :class:`PreferencePair` that remembers its source and what was skipped."""

    def __init__(self, pairs=(), *, source: str = "", skipped: Counter | None = None):
        super().__init__(pairs)
        self.source = source
        self.skipped = Counter() if skipped is None else skipped
        self.part = None  # the split part kept (None: every row)
        self.other_parts = 0  # usable pairs left out because they belong to another part

    def restricted(self, pairs, *, part: str, other_parts: int) -> "PairSet":
        """The pairs of one split part, with this set's source and skip counts
        (:func:`dsteer_eval.data.splits.select_part`)."""
        out = PairSet(pairs, source=self.source, skipped=self.skipped)
        out.part, out.other_parts = part, other_parts
        return out

    def describe(self) -> dict:
        out = {"source": self.source, "pairs": len(self), "skipped": dict(self.skipped)}
        if self.part is not None:
            out.update(part=self.part, other_parts=self.other_parts)
        return out


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


class UnusableRow(Exception):
    """A well-formed row that cannot be a pair (kind in ``args[0]``)."""


def pair_from_row(row) -> PreferencePair:
    """One row (HH dialogues or prompt/chosen/rejected) as a pair; ``ValueError`` if malformed."""
    if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
        raise ValueError("needs fields 'chosen' and 'rejected' (HH dialogues) or 'prompt'/'chosen'/'rejected'")
    for key in ("prompt", "chosen", "rejected"):
        if key in row and not isinstance(row[key], str):
            raise ValueError(f"field {key!r} must be a string, got {type(row[key]).__name__}")
    if "prompt" in row:
        pair = PreferencePair(row["prompt"], row["chosen"], row["rejected"])
        if not pair.prompt.strip():
            raise UnusableRow("empty prompt")
    else:
        split = split_pair(row["chosen"], row["rejected"])
        if split is None:
            raise UnusableRow("different prompts")
        pair = PreferencePair(*split)
    if not pair.chosen.strip() or not pair.rejected.strip():
        raise UnusableRow("empty reply")
    if pair.chosen == pair.rejected:
        raise UnusableRow("identical replies")
    return pair


class DataFileError(ValueError):
    """A preference data file that cannot be read; the message names the file and the line."""


_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value, field: str = ""):
    """``(field, string)`` of the first string in ``value`` holding a lone surrogate, or ``None``."""
    if isinstance(value, str):
        return (field, value) if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{field}.{key}" if field else str(key)
            if _SURROGATE.search(str(key)):
                return name, str(key)
            bad = _lone_surrogate(item, name)
            if bad:
                return bad
    if isinstance(value, list):
        for i, item in enumerate(value):
            bad = _lone_surrogate(item, f"{field}[{i}]")
            if bad:
                return bad
    return None


def jsonl_rows(path: Path):
    """``(where, row)`` of every non-blank line; every failure names the file and the line."""
    opener = gzip.open if path.suffix == ".gz" else open
    last_good = 0
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataFileError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                    bad = _lone_surrogate(row)
                    if bad is not None:
                        field, text = bad
                        at = _SURROGATE.search(text).start()
                        raise DataFileError(
                            f"{path}:{lineno}: field {field or '(the row)'!r} holds a lone surrogate "
                            f"\\u{ord(text[at]):04x} at character {at} (half of a UTF-16 pair, not valid "
                            f"Unicode text); fix or drop that row"
                        )
                    yield f"{path}:{lineno}", row
                last_good = lineno
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        if isinstance(exc, UnicodeDecodeError):
            why = "not a UTF-8 JSONL(.gz) file (invalid UTF-8)"
        elif isinstance(exc, EOFError):
            why = "the gzip data is cut off (an incomplete copy or download: fetch it again)"
        elif isinstance(exc, gzip.BadGzipFile) and last_good == 0 and "Not a gzipped file" in str(exc):
            why = "not a UTF-8 JSONL(.gz) file (not gzip data)"
        else:
            why = "the gzip data is corrupt (fetch or compress the file again)"
        last = f"the last good line is {last_good}" if last_good else "no line could be read"
        raise DataFileError(f"preference data {path}: {why}; {last} ({type(exc).__name__}: {exc})") from None


def _hub_rows(name: str, data_dir: str | None, split: str):
    from datasets import load_dataset  # deferred: datasets loads only for hub data

    dataset = load_dataset(name, data_dir=data_dir, split=split)
    for i, row in enumerate(dataset):
        yield f"{name}[{split}][{i}]", row


def load_pairs(source: str | Path, *, data_dir: str | None = None, split: str = "train",
               limit: int | None = None, offset: int = 0, strict: bool = False,
               part: str | None = None) -> PairSet:
    """Pairs from a local JSONL(.gz) path or a hub dataset id (``data_dir``/``split`` for the hub).

    ``part`` (``train``/``vector``/``probe``/``eval``; ``None`` or ``"all"``: every row)
    keeps the pairs of that part of the split (:func:`dsteer_eval.data.splits.part_of` of the
    prompt); the others are counted in :attr:`PairSet.other_parts`.  ``offset`` then skips
    that many usable pairs (of the part) first; ``limit`` caps the number returned.

    Unusable rows (empty reply, differing prompts, identical replies) are skipped
    and counted, or raise with ``strict=True``.  Malformed rows always raise.
    """
    path = Path(source)
    if path.suffix in (".jsonl", ".gz", ".json") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"preference data {path}: no such file")
        rows, label = jsonl_rows(path), str(path)
    elif "/" in str(source) and not str(source).startswith((".", "/")):
        rows = _hub_rows(str(source), data_dir, split)
        label = f"hub:{source}" + (f"/{data_dir}" if data_dir else "") + f"[{split}]"
    else:
        raise FileNotFoundError(f"preference data {source}: no such file (and not a hub id like Anthropic/hh-rlhf)")
    if offset < 0 or (limit is not None and limit < 1):
        raise ValueError(f"offset must be >= 0 and limit >= 1, got offset={offset}, limit={limit}")

    part = check_part(part)
    pairs = PairSet(source=label + (f" part {part}" if part else "") + (f" from pair {offset}" if offset else ""))
    pairs.part = part
    usable = 0
    for where, row in rows:
        try:
            pair = pair_from_row(row)
            if part is not None and part_of(pair.prompt) != part:
                pairs.other_parts += 1
                continue
            usable += 1
            if usable > offset:
                pairs.append(pair)
        except UnusableRow as why:
            if strict:
                raise ValueError(f"{where}: unusable pair ({why.args[0]}); drop it or run without strict") from None
            pairs.skipped[why.args[0]] += 1
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        extra = f" ({sum(pairs.skipped.values())} unusable rows skipped: {dict(pairs.skipped)})" if pairs.skipped else ""
        if part is not None:
            extra += (f" in part {part!r} ({pairs.other_parts} usable pairs are in other parts; "
                      f"pass part all to use them)")
        raise ValueError(f"preference data {label} holds no usable pairs{extra}")
    if pairs.skipped:
        log.warning("preference data %s: skipped %s", label, dict(pairs.skipped))
    return pairs


def load_prompts(source: str | Path, *, data_dir: str | None = None, split: str = "train",
                 limit: int | None = None, offset: int = 0, part: str | None = None) -> tuple[list[str], str]:
    """Unique prompts from preference data, or from rows holding only a ``prompt`` string.

    Returns ``(prompts, source label)``.  Rows with ``chosen``/``rejected`` go
    through :func:`load_pairs` (and its checks); prompt-only rows are read as is.
    ``part`` keeps the prompts of one split part (before ``offset``/``limit``).
    """

    part = check_part(part)
    path = Path(source)
    if path.is_file():
        first = next((row for _, row in jsonl_rows(path)), None)
        if isinstance(first, dict) and "prompt" in first and "chosen" not in first:
            prompts = []
            for where, row in jsonl_rows(path):
                text = row.get("prompt") if isinstance(row, dict) else None
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(f"{where}: a prompt-only row needs a non-empty string field 'prompt'")
                if part is None or part_of(text) == part:
                    prompts.append(text)
            prompts = list(dict.fromkeys(prompts))[offset:]
            prompts = prompts[:limit] if limit is not None else prompts
            if not prompts:
                where = f" in part {part!r}" if part else ""
                raise ValueError(f"prompt file {path} holds no prompts{where} (after offset={offset})")
            return prompts, str(path) + (f" part {part}" if part else "")
    pairs = load_pairs(source, data_dir=data_dir, split=split, limit=limit, offset=offset, part=part)
    return list(dict.fromkeys(p.prompt for p in pairs)), pairs.source


def read_pairs(path: str | Path, *, limit: int | None = None, strict: bool = False) -> PairSet:
    """Pairs from a local JSONL(.gz) file (see :func:`load_pairs`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preference data {path}: no such file")
    return load_pairs(path, limit=limit, strict=strict)


# ---------------------------------------------------------------- truncation
_TURN_START = re.compile(r"\n\n(?:Human|Assistant):")


def turn_starts(prompt: str) -> list[int]:
    """Offsets where a ``\n\nHuman:`` or ``\n\nAssistant:`` turn starts, except a final bare
    ``\n\nAssistant:`` (the reply's slot, which is always kept)."""
    starts = [m.start() for m in _TURN_START.finditer(prompt)]
    if starts and prompt.endswith(SEPARATOR) and starts[-1] == len(prompt) - len(SEPARATOR):
        starts.pop()
    return starts


def left_truncate(prompt: str, tokenizer, max_tokens: int) -> tuple[str, int]:
    """``prompt`` cut to at most ``max_tokens`` tokens (as ``tokenizer(prompt).input_ids`` counts
    them, special tokens included), and how many tokens were cut (0: unchanged).

    The cut keeps the final turns: the longest suffix that starts at a ``\n\nHuman:`` or
    ``\n\nAssistant:`` turn boundary and fits.  When even the last turn (with the final
    ``\n\nAssistant:``) is too long, its final tokens are kept: the tail of the token ids,
    decoded, shortened one token at a time until the re-tokenized text fits.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    n_tokens = lambda text: len(tokenizer(text).input_ids)  # noqa: E731
    full = n_tokens(prompt)
    if full <= max_tokens:
        return prompt, 0
    for start in turn_starts(prompt):  # earliest first: the longest suffix that fits
        if start == 0:
            continue
        candidate = prompt[start:]
        kept = n_tokens(candidate)
        if kept <= max_tokens:
            return candidate, full - kept
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    keep = max(max_tokens - n_tokens(""), 1)  # room left by the special tokens the tokenizer adds
    while keep > 0:
        candidate = tokenizer.decode(ids[-keep:], skip_special_tokens=True)
        kept = n_tokens(candidate)
        if candidate and kept <= max_tokens:
            return candidate, full - kept
        keep -= 1
    raise ValueError(f"cannot cut a prompt to {max_tokens} tokens")
