"""results/README.md is generated from the committed results (no typed numbers or verdicts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_results_readme_is_generated_from_the_results():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "results_readme.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
