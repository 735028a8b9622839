#!/usr/bin/env bash
# Install dsteer-eval with its pure-Python dependencies at their floors (ci/floors.txt) into a
# fresh venv and run the tests that exercise those libraries' APIs (steered, continuation head,
# sweep, DPO training, dpo-gate). CI runs this after the main suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TRANSFORMERS_OFFLINE=1
VENV=${FLOORS_VENV:-build/floors-venv}
rm -rf "$VENV"
DSTEER_VENV="$VENV" bash scripts/setup.sh >/dev/null
"$VENV/bin/python" -m pip install -q -c ci/floors.txt $(grep -v '^#' ci/floors.txt | grep -v '^$')
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
pins = dict(l.strip().split("==") for l in open("ci/floors.txt") if "==" in l and not l.startswith("#"))
got = {k: md.version(k) for k in pins}
bad = {k: (pins[k], got[k]) for k in pins if got[k] != pins[k]}
assert not bad, f"floor versions not installed: {bad}"
print("floors installed:", ", ".join(f"{k} {v}" for k, v in got.items()), "| torch", md.version("torch"))
PY
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/adapters/test_adapter.py tests/adapters/test_continuation_head.py \
    tests/sweep/test_sweep.py tests/dpo/test_dpo_training.py tests/dpo/test_dpo_gate.py tests/sweep/test_alpha_batch.py \
    tests/vectors/test_vector_formats.py tests/sweep/test_merged_adapter.py tests/common/test_provenance.py tests/adapters/test_packed_contexts.py \
    -k "not embedded"
