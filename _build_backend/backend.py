"""PEP 517 backend: setuptools, plus the ``dsteer_eval.pth`` start-up hook in every wheel.

setuptools cannot place a file at the root of site-packages, which is where a
``.pth`` must live; so after setuptools builds a wheel (regular or editable) we
add the one-line ``.pth`` to it and to its RECORD.  See adapters/plugin.py.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (re-export the hooks we don't change)

PTH_NAME = "dsteer_eval.pth"
PTH_TEXT = "import dsteer_eval.adapters.plugin as _dsteer; _dsteer.install()\n"


def _add_pth(wheel_path: str) -> None:
    data = PTH_TEXT.encode()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    with zipfile.ZipFile(wheel_path) as src:
        entries = [(info, src.read(info.filename)) for info in src.infolist()]
    tmp = wheel_path + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info, content in entries:
            if info.filename.endswith(".dist-info/RECORD"):
                record = content.decode().rstrip("\n") + f"\n{PTH_NAME},sha256={digest},{len(data)}\n"
                dst.writestr(info, record)
            elif info.filename != PTH_NAME:
                dst.writestr(info, content)
        dst.writestr(PTH_NAME, data)
    os.replace(tmp, wheel_path)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    _add_pth(os.path.join(wheel_directory, name))
    return name


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    _add_pth(os.path.join(wheel_directory, name))
    return name
