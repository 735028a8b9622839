"""Every package of the source tree is in the wheel (pyproject's explicit package list)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {"dsteer_eval." + ".".join(p.parent.relative_to(ROOT / "dsteer_eval").parts)
             for p in (ROOT / "dsteer_eval").rglob("__init__.py")}
    found = {name.rstrip(".") for name in found}
    mapped = set(config.get("package-dir", {}))
    missing = found - listed - mapped
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"


def test_pyproject_floors_are_the_versions_ci_installs():
    """Every pin of ci/floors.txt (what scripts/check_floors.sh installs and tests) is pyproject's lower bound."""
    import re

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for dep in deps:
        m = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?>=([0-9][0-9.]*)", dep)
        if m:
            floors[m.group(1).lower().replace("-", "_")] = m.group(2)
    pins = dict(line.strip().split("==") for line in (ROOT / "ci/floors.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins, "ci/floors.txt pins nothing"
    for name, version in pins.items():
        key = name.lower().replace("-", "_")
        assert key in floors, f"{name} is pinned in ci/floors.txt but has no lower bound in pyproject.toml"
        have = tuple(int(x) for x in floors[key].split("."))
        pinned = tuple(int(x) for x in version.split("."))
        assert have[: len(pinned)] == pinned[: len(have)], f"{name}: pyproject >= {floors[key]}, ci/floors.txt {version}"
