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


def test_the_lee_report_page_is_generated_from_the_results():
    """results/lee_smollm2/README.md (Lee et al. on SmolLM2) is scripts/lee_report.py's output from the JSON files."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "lee_report.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
