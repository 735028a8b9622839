"""Cost of the dsteer_eval.pth start-up hook on every Python start.

Runs `python -X importtime -c pass` in this environment N times and reads the
cumulative import time of the modules the hook loads (dsteer_eval,
dsteer_eval.adapters.plugin), against the wall time of the whole start-up.

    python bench/startup.py [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "startup.json"))
    args = ap.parse_args()
    hook_us, wall_s, imported = [], [], set()
    for _ in range(args.runs):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True, check=True)
        wall_s.append(time.perf_counter() - start)
        total = 0
        for line in proc.stderr.splitlines():
            if not line.startswith("import time:") or "|" not in line:
                continue
            _, cumulative, name = (p.strip() for p in line[len("import time:"):].split("|"))
            imported.add(name.strip())
            if name.strip() == "dsteer_eval.adapters.plugin":
                total += int(cumulative)
            elif name.strip() == "dsteer_eval":
                total += int(cumulative)
        hook_us.append(total)
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "lm_eval", "transformers", "numpy"))
    report = {
        "runs": args.runs,
        "median_hook_import_us": statistics.median(hook_us),
        "median_python_startup_ms": 1000 * statistics.median(wall_s),
        "hook_share_of_startup": statistics.median(hook_us) / 1e6 / statistics.median(wall_s),
        "heavy_modules_imported_at_startup": heavy,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
