"""The interpreter start-up hook: a tiny meta-path finder that wakes dsteer-eval only when lm-eval is imported.

The wheel (regular and editable) installs this file at the root of site-packages as ``_dsteer_eval_startup.py``
(``_build_backend/backend.py`` copies it) and a one-line ``dsteer_eval.pth`` that runs :func:`install`. It
imports nothing but ``sys``: not ``dsteer_eval`` (whose import at start-up, before the working directory is on
``sys.path``, made an editable install shadow every other checkout), not the log redaction (which belongs to
lm-eval's and dsteer-eval's records, not to every program of the venv), not lm-eval, not torch.

When, and only when, one of the lm-eval modules below is executed, the finder calls the function of the same
role in :mod:`dsteer_eval.adapters.plugin`; by then the program's own ``sys.path`` is in place, so the
``dsteer_eval`` it imports is the one the program would import itself.
"""

from __future__ import annotations

import sys

PLUGIN = "dsteer_eval.adapters.plugin"
# lm-eval module -> the plugin function run right after it executes
AFTER = {
    "lm_eval": "on_lm_eval",
    "lm_eval.models": "on_models",
    "lm_eval.tasks.manager": "on_task_manager",
}
# lm-eval module -> the plugin function that runs it (given a callable that executes the module)
AROUND = {"lm_eval.models.hf_steered": "around_builtin_steered"}


def _plugin_function(name: str):
    __import__(PLUGIN)
    return getattr(sys.modules[PLUGIN], name)


class _LmEvalFinder:  # a meta-path finder (importlib.abc is not imported: start-up cost)
    """Wraps the loaders of a few lm-eval modules; finds nothing itself."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in AFTER and fullname not in AROUND:
            return None
        for finder in sys.meta_path:
            if finder is self or type(finder).__name__ == "_LmEvalFinder" or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original = loader.exec_module

        def exec_module(module, _original=original, _name=fullname):
            if _name in AROUND:
                _plugin_function(AROUND[_name])(lambda: _original(module))
            else:
                _original(module)
                try:
                    _plugin_function(AFTER[_name])()
                except Exception as exc:  # a broken plugin must not break lm-eval itself
                    print(f"dsteer-eval: lm_eval hook failed after {_name}: {exc}", file=sys.stderr)

        loader.exec_module = exec_module
        return spec


def install() -> None:
    """Called from ``dsteer_eval.pth``: cheap, idempotent, never raises. When lm-eval was imported before this
    ran (it cannot be at start-up, but :func:`dsteer_eval.adapters.plugin.register` calls this later), the
    plugin functions run now."""
    try:
        if any(type(f).__name__ == "_LmEvalFinder" for f in sys.meta_path):
            return
        sys.meta_path.insert(0, _LmEvalFinder())
    except Exception as exc:  # pragma: no cover - a broken hook must not break Python
        print(f"dsteer-eval: lm_eval hook not installed: {exc}", file=sys.stderr)
