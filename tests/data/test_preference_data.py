"""Reading HH preference data: schemas, unusable rows counted (or refused with strict), clear errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import write_jsonl

from dsteer_eval.data.preference_pairs import load_pairs, split_pair

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh_harmless_dev.jsonl.gz"
GOOD = {"chosen": "\n\nHuman: hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: hi\n\nAssistant: Go away."}


def test_split_pair_cuts_at_the_final_assistant_turn():
    chosen = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: yes"
    rejected = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: no"
    assert split_pair(chosen, rejected) == ("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:", " yes", " no")
    assert split_pair(chosen, rejected.replace("Human: a", "Human: x")) is None


def test_both_schemas_and_gzip(tmp_path):
    rows = [GOOD, {"prompt": "Q:", "chosen": " a", "rejected": " b"}]
    plain = load_pairs(write_jsonl(tmp_path / "p.jsonl", rows))
    with gzip.open(tmp_path / "p.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    assert load_pairs(tmp_path / "p.jsonl.gz") == plain
    assert [p.prompt for p in plain] == ["\n\nHuman: hi\n\nAssistant:", "Q:"]
    assert plain.describe() == {"source": str(tmp_path / "p.jsonl"), "pairs": 2, "skipped": {}}


def test_unusable_rows_are_counted_or_refused_with_strict(tmp_path):
    rows = [GOOD,
            {"chosen": GOOD["chosen"], "rejected": "\n\nHuman: other\n\nAssistant: x"},
            {"chosen": GOOD["chosen"], "rejected": "\n\nHuman: hi\n\nAssistant: "},
            {"prompt": "Q", "chosen": " same", "rejected": " same"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    pairs = load_pairs(path)
    assert len(pairs) == 1
    assert pairs.skipped == {"different prompts": 1, "empty reply": 1, "identical replies": 1}
    with pytest.raises(ValueError, match=r"p\.jsonl:2: unusable pair \(different prompts\)"):
        load_pairs(path, strict=True)


def test_missing_file_and_limit(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_pairs(tmp_path / "nope.jsonl")
    assert len(load_pairs(write_jsonl(tmp_path / "p.jsonl", [GOOD] * 5), limit=3)) == 3


def test_not_gzip_is_a_clear_error(tmp_path):
    path = tmp_path / "p.jsonl.gz"
    path.write_text("plain text, not gzip")
    with pytest.raises(ValueError, match="not a UTF-8 JSONL"):
        load_pairs(path)


@pytest.mark.skipif(not SHARED.is_file(), reason="../shared/data (real HH data) is not present")
def test_real_hh_harmless_dev_data():
    pairs = load_pairs(SHARED)
    assert len(pairs) + sum(pairs.skipped.values()) == 1500
    assert pairs.skipped == {"empty reply": 4, "different prompts": 1}
    assert all(p.prompt.endswith("\n\nAssistant:") and p.chosen != p.rejected for p in pairs)


def test_offset_skips_usable_pairs(tmp_path):
    rows = [{"prompt": f"Q{i}", "chosen": " a", "rejected": " b"} for i in range(6)]
    rows.insert(1, {"prompt": "Q", "chosen": " same", "rejected": " same"})  # unusable: not counted by offset
    pairs = load_pairs(write_jsonl(tmp_path / "p.jsonl", rows), offset=2, limit=3)
    assert [p.prompt for p in pairs] == ["Q2", "Q3", "Q4"]
    with pytest.raises(ValueError, match="offset must be >= 0"):
        load_pairs(tmp_path / "p.jsonl", offset=-1)
