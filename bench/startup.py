"""Cost of the dsteer_eval.pth start-up hook on every Python start, and of the log redaction per record.

Runs `python -X importtime -c pass` in this environment N times and reads the
cumulative import time of the module the hook loads (`_dsteer_eval_startup`; any
`dsteer_eval*` module imported at start-up is counted too, and listed), against
the wall time of the whole start-up. Then times one `logger.info` record with
the redaction installed (a record of another program's logger, and one of
lm-eval's) against the same record with logging's plain factory.

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


RECORD_TIMING = r"""
import json, logging, os, timeit
os.environ.setdefault("BENCH_SERVICE_API_KEY", "bench-secret-value-123")
logging.getLogger().addHandler(logging.NullHandler())
logging.getLogger().setLevel(logging.INFO)
other, ours = logging.getLogger("otherprog"), logging.getLogger("lm_eval.bench")
n = 20000
def per_record(log):
    return min(timeit.repeat(lambda: log.info("value %s", 42), number=n, repeat=5)) / n * 1e6
plain = per_record(other)
from dsteer_eval.common.redaction import install_log_redaction
install_log_redaction(scope="lm_eval")
print(json.dumps({"record_us_plain_factory": plain, "record_us_other_program": per_record(other),
                  "record_us_lm_eval_record": per_record(ours)}))
"""


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
            if name.strip() == "_dsteer_eval_startup" or name.strip() == "dsteer_eval":
                total += int(cumulative)
        hook_us.append(total)
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "lm_eval", "transformers", "numpy", "dsteer_eval"))
    per_record = subprocess.run([sys.executable, "-c", RECORD_TIMING], capture_output=True, text=True, check=True)
    report = {
        "runs": args.runs,
        "median_hook_import_us": statistics.median(hook_us),
        "median_python_startup_ms": 1000 * statistics.median(wall_s),
        "hook_share_of_startup": statistics.median(hook_us) / 1e6 / statistics.median(wall_s),
        "heavy_modules_imported_at_startup": heavy,
        **json.loads(per_record.stdout),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
