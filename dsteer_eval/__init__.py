"""dsteer-eval: lm-evaluation-harness plugins for testing the D-STEER thesis.

Importing this package is deliberately cheap (no torch, no lm_eval).

The design card keeps the lm-eval model adapters and the YAML tasks at the repository's top level
(``adapters/``, ``tasks/``); a wheel or an editable install maps them to ``dsteer_eval.adapters`` and
``dsteer_eval.tasks`` (pyproject's ``package-dir``). A source checkout used without installing (its root on
``sys.path``) gets the same two names from :class:`_CheckoutFolders`, so every way of running the code
imports the same modules under the same names.
"""

import os as _os
import sys as _sys
from importlib.util import spec_from_file_location as _spec_from_file_location

__version__ = "0.1.0"

_MAPPED = {"dsteer_eval.adapters": "adapters", "dsteer_eval.tasks": "tasks"}


class _CheckoutFolders:
    """A meta-path finder for the two top-level folders of a source checkout (asked first; finds nothing else)."""

    def __init__(self, folders: dict):
        self.folders = folders

    def find_spec(self, fullname, path=None, target=None):
        folder = self.folders.get(fullname)
        if folder is None:
            return None
        return _spec_from_file_location(fullname, _os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])


def _mount_checkout_folders() -> None:
    here = _os.path.dirname(_os.path.abspath(__file__))
    root = _os.path.dirname(here)
    if not _os.path.isfile(_os.path.join(root, "pyproject.toml")):
        return  # an installed wheel: the folders are inside the package
    folders = {name: _os.path.join(root, sub) for name, sub in _MAPPED.items()
               if _os.path.isfile(_os.path.join(root, sub, "__init__.py"))
               and not _os.path.isdir(_os.path.join(here, name.rpartition(".")[2]))}
    if folders and not any(isinstance(f, _CheckoutFolders) for f in _sys.meta_path):
        _sys.meta_path.insert(0, _CheckoutFolders(folders))  # before an editable install's finder (another checkout)


_mount_checkout_folders()
