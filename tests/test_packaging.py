"""Every package of the source tree is in the wheel (pyproject's explicit package list)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {"dsteer_eval." + ".".join(p.parent.relative_to(ROOT / "dsteer_eval").parts)
             for p in (ROOT / "dsteer_eval").rglob("__init__.py")}
    found = {name.rstrip(".") for name in found}
    mapped = set(config.get("package-dir", {}))
    missing = found - listed - mapped
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"
