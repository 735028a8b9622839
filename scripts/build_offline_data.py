#!/usr/bin/env python
"""Regenerate the shipped real-row task data from ../shared/data, deterministically.

Writes, under tasks/ (eval part of the split only, but for the probe-part selection file; see
dsteer_eval.data.splits):

* hh/hh_eval.jsonl                  Anthropic HH-RLHF harmless-base pairs (at most 300)
* truthfulqa/truthfulqa_eval.jsonl  TruthfulQA questions, truthful_qa schema + mc1/mc2 targets (at most 100)
* refusal/refusal_eval.jsonl        the refusal documents built from those same rows
* refusal/refusal_select.jsonl      60 + 30 refusal documents of the **probe** part (the report's choices)
* refusal/refusal_mini.jsonl        6 + 6 documents from the self-written hh_mini / truthfulqa_mini samples
* {hh,truthfulqa,refusal}/DATA_LICENSE.md  source, licence and the rows used

    .venv/bin/python scripts/build_offline_data.py            # write
    .venv/bin/python scripts/build_offline_data.py --check    # exit 1 if a shipped file differs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dsteer_eval.common.output_folder import atomic_write_text  # noqa: E402
from dsteer_eval.data.refusal_set import (  # noqa: E402
    HH_SOURCE, MAX_HH, MAX_TQA, REFUSALS, TQA_SOURCE, jsonl_text, mini_refusal_docs, offline_subsets, selection_docs,
)
from dsteer_eval.data.splits import FRACTIONS, SPLIT_SEED  # noqa: E402

HH_FILE, TQA_FILE = "hh_harmless_dev.jsonl.gz", "truthfulqa_dev.csv"
HH_MIT = """MIT License

Copyright (c) 2022 Anthropic

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE."""
REGENERATE = "`.venv/bin/python scripts/build_offline_data.py` (reads `../shared/data/`)"


def _ranges(numbers) -> str:
    """1, 2, 3, 7 -> '1-3, 7'."""
    numbers, out = sorted(numbers), []
    for n in numbers:
        if out and n == out[-1][1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in out)


def _split_rule() -> str:
    shares = ", ".join(f"{k} {v}" for k, v in FRACTIONS.items())
    return (f"Only rows of the **eval** part of dsteer-eval's file-level split are shipped "
            f"(`dsteer_eval.data.splits.part_of`: seeded sha256 (`{SPLIT_SEED}`) of the normalised first Human "
            f"turn / question; {shares}), so nothing here is trained on by `train-dpo --part train`.")


def licence_texts(subsets: dict, select: list | None = None) -> dict:
    hh, tqa, refusal = (subsets[k] for k in ("hh/hh_eval.jsonl", "truthfulqa/truthfulqa_eval.jsonl",
                                             "refusal/refusal_eval.jsonl"))
    hh_lines = _ranges(r["source_line"] for r in hh)
    tqa_rows = _ranges(r["source_row"] for r in tqa)
    harmful = sum(d["kind"] == "harmful" for d in refusal)
    return {
        "hh/DATA_LICENSE.md": f"""# Data in this folder

## `hh_eval.jsonl` (task `dsteer_hh_offline`)

{len(hh)} preference pairs of **{HH_SOURCE}**, copied unchanged (`chosen`, `rejected`), plus two
fields added by dsteer-eval: `key` (a stable id of the prompt) and `source_line`.

Licence of the source (https://github.com/anthropics/hh-rlhf/blob/master/LICENSE), reproduced
as it requires:

```
{HH_MIT}
```

Rows used: lines {hh_lines} of the development file `{HH_FILE}` (1,500 rows of harmless-base), the
first {MAX_HH} usable pairs of the eval part at most. {_split_rule()}

Regenerate with {REGENERATE}.

## `hh_mini.jsonl` (task `dsteer_hh_mini`)

24 pairs written for dsteer-eval in the same schema (not taken from HH-RLHF); Apache-2.0 with the
project.
""",
        "truthfulqa/DATA_LICENSE.md": f"""# Data in this folder

## `truthfulqa_eval.jsonl` (tasks `truthfulqa_mc1_offline`, `truthfulqa_mc2_offline`, `truthfulqa_gen_offline`)

{len(tqa)} questions of **{TQA_SOURCE}** (Lin, Hilton and Evans, 2021), in the `truthful_qa` schema:
`type`, `category`, `question`, `best_answer`, `correct_answers`, `incorrect_answers`, `source` as in
the original CSV (answers split at `; `), and `mc1_targets` (the best answer first, then the
incorrect answers) / `mc2_targets` (every correct answer labelled 1, every incorrect one 0) built
from them as the hub's `multiple_choice` config does; `key` and `source_row` added by dsteer-eval.

TruthfulQA is licensed under the Apache License, Version 2.0
(https://github.com/sylinrl/TruthfulQA/blob/main/LICENSE); this subset is redistributed under the
same licence, with the modifications described above.

Rows used: data rows {tqa_rows} of the development file `{TQA_FILE}` (200 questions), the eval
part ({MAX_TQA} at most). {_split_rule()}

Regenerate with {REGENERATE}.

## `truthfulqa_mini.jsonl` (the `*_mini` tasks)

12 questions written for dsteer-eval in the same schema; Apache-2.0 with the project.
""",
        "refusal/DATA_LICENSE.md": f"""# Data in this folder

## `refusal_eval.jsonl` (tasks `dsteer_refusal`, `dsteer_refusal_ll`, `dsteer_refusal_judged`)

{len(refusal)} documents derived from the rows shipped in `../hh/hh_eval.jsonl` and
`../truthfulqa/truthfulqa_eval.jsonl` (no other rows):

* {harmful} **harmful** documents from **{HH_SOURCE}**: the dialogue up to the final `Assistant:`
  (`prompt`) and the data set's rejected reply (`rejected`), for every shipped pair whose rejected
  reply is not a refusal (`dsteer_eval.data.refusal_set.is_refusal`); `source_line` names the line of
  `{HH_FILE}`. MIT licence, Copyright (c) 2022 Anthropic (full notice in `../hh/DATA_LICENSE.md`).
* {len(refusal) - harmful} **harmless** documents from **{TQA_SOURCE}**: the question as
  `\\n\\nHuman: {{question}}\\n\\nAssistant:` and the best answer (`chosen`); `source_row` names the
  row of `{TQA_FILE}`. Apache-2.0 (see `../truthfulqa/DATA_LICENSE.md`).

The {len(REFUSALS)} refusal phrasings (`chosen` of harmful, `rejected` of harmless documents) are
written for dsteer-eval (Apache-2.0). {_split_rule()}

## `refusal_select.jsonl` (task `dsteer_refusal_ll_select`)

{len(select or [])} documents built by the same rules from the **probe** part of the same two files (never
trained on, not the vector part v̄ is extracted from, not eval): the first
{sum(d["kind"] == "harmful" for d in select or [])} usable harmful HH pairs (lines
{_ranges(d["source_line"] for d in select or [] if d["kind"] == "harmful")} of `{HH_FILE}`, MIT as above) and the
first {sum(d["kind"] == "harmless" for d in select or [])} TruthfulQA questions (data rows
{_ranges(d["source_row"] for d in select or [] if d["kind"] == "harmless")} of `{TQA_FILE}`, Apache-2.0). The
D-STEER report chooses its layer on them and reports the choice on the eval documents.

## `refusal_mini.jsonl` (tasks `dsteer_refusal_mini`, `dsteer_refusal_ll_mini`)

Built by the same rules from the self-written `../hh/hh_mini.jsonl` and
`../truthfulqa/truthfulqa_mini.jsonl`; no third-party text.

Regenerate both with {REGENERATE}.
""",
    }


def build(data_dir: Path, tasks: Path) -> dict:
    subsets = offline_subsets(data_dir / HH_FILE, data_dir / TQA_FILE)
    files = {name: jsonl_text(rows) for name, rows in subsets.items()}
    select = selection_docs(data_dir / HH_FILE, data_dir / TQA_FILE)
    files["refusal/refusal_select.jsonl"] = jsonl_text(select)
    files["refusal/refusal_mini.jsonl"] = jsonl_text(
        mini_refusal_docs(tasks / "hh" / "hh_mini.jsonl", tasks / "truthfulqa" / "truthfulqa_mini.jsonl"))
    files.update(licence_texts(subsets, select))
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder of the shared data")
    parser.add_argument("--tasks", default=str(REPO / "tasks"), help="the tasks/ folder to write into")
    parser.add_argument("--check", action="store_true", help="compare with the shipped files; write nothing")
    args = parser.parse_args(argv)
    data, tasks = Path(args.data), Path(args.tasks)
    for name in (HH_FILE, TQA_FILE):
        if not (data / name).is_file():
            print(f"build_offline_data: {data / name} is missing (the shared data folder)", file=sys.stderr)
            return 2
    files = build(data, tasks)
    differ = []
    for name, text in files.items():
        path = tasks / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                differ.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
            print(f"wrote {path} ({text.count(chr(10))} lines)")
    if differ:
        print("differs from a fresh build: " + ", ".join(differ), file=sys.stderr)
        return 1
    if args.check:
        print(f"all {len(files)} shipped files match a fresh build")
    return 0


if __name__ == "__main__":
    sys.exit(main())
