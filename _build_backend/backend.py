"""PEP 517 backend: setuptools, plus the ``dsteer_eval.pth`` start-up hook in every wheel.

setuptools cannot place a file at the root of site-packages, which is where a
``.pth`` must live; so after setuptools builds a wheel (regular or editable) we
add to it, and to its RECORD, the one-line ``.pth`` and the module it runs,
``_dsteer_eval_startup.py`` (a copy of adapters/startup_hook.py: a top-level
module, so that start-up imports nothing of the ``dsteer_eval`` package).
See adapters/plugin.py.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (re-export the hooks we don't change)

PTH_NAME = "dsteer_eval.pth"
HOOK_MODULE = "_dsteer_eval_startup"
PTH_TEXT = f"import {HOOK_MODULE}; {HOOK_MODULE}.install()\n"
HOOK_SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "adapters", "startup_hook.py")


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _add_pth(wheel_path: str) -> None:
    with open(HOOK_SOURCE, "rb") as fh:
        added = {PTH_NAME: PTH_TEXT.encode(), f"{HOOK_MODULE}.py": fh.read()}
    with zipfile.ZipFile(wheel_path) as src:
        entries = [(info, src.read(info.filename)) for info in src.infolist()]
    tmp = wheel_path + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info, content in entries:
            if info.filename.endswith(".dist-info/RECORD"):
                lines = [line for line in content.decode().splitlines() if line.split(",")[0] not in added]
                lines += [_record_line(name, data) for name, data in added.items()]
                dst.writestr(info, "\n".join(lines) + "\n")
            elif info.filename not in added:
                dst.writestr(info, content)
        for name, data in added.items():
            dst.writestr(name, data)
    os.replace(tmp, wheel_path)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    _add_pth(os.path.join(wheel_directory, name))
    return name


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    _add_pth(os.path.join(wheel_directory, name))
    return name
