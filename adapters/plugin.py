"""Connect dsteer-eval to the plain ``lm_eval`` command.

lm-eval 0.4.13 has no plugin entry points, already maps ``steered`` to its own
``SteeredModel``, and refuses a second registration of a name.  So the wheel
installs ``dsteer_eval.pth`` into site-packages, whose single line runs
:func:`install` at interpreter start.  ``install`` only appends a tiny finder
to ``sys.meta_path`` (no torch, no lm_eval import); the finder acts when, and
only when, lm-eval itself is imported:

* after ``lm_eval.models`` runs, ``steered`` points (lazily) at
  ``dsteer_eval.adapters.steered:SteeredLM`` and lm-eval's original class stays
  reachable as ``steered-builtin``;
* after ``lm_eval.tasks.manager`` runs, every ``TaskManager`` that includes
  lm-eval's own tasks also indexes our ``tasks/`` (``dsteer_eval.tasks``; a user's
  ``--include_path`` is indexed after ours, so it can override our names);
* while ``lm_eval.models.hf_steered`` runs, its ``@register_model("steered")``
  is let through and then redirected to ``steered-builtin``, so importing the
  built-in class (our adapter delegates to it) never raises.

Without the ``.pth`` (e.g. a source checkout on ``PYTHONPATH``), call
:func:`register` before using lm-eval from Python.
"""

from __future__ import annotations

import sys

from dsteer_eval.common.package_files import tasks_dir  # noqa: F401  (re-exported; the start-up hook needs it)

OUR_TARGET = "dsteer_eval.adapters.steered:SteeredLM"
BUILTIN_TARGET = "lm_eval.models.hf_steered:SteeredModel"
BUILTIN_ALIAS = "steered-builtin"
OUR_ALIAS = "dsteer"  # the same model under a name lm-eval does not ship (registered by steered.py itself too)
VLLM_ALIAS, VLLM_TARGET = "steered-vllm", "dsteer_eval.adapters.steered_vllm:SteeredVLLM"  # loads only when asked for


def _point_registry_at_us() -> None:
    from lm_eval.api.registry import model_registry  # deferred: lm-eval internals load only when this path runs

    objs = model_registry._objs  # the registry has no public "replace"
    current = objs.get("steered")
    where = current if isinstance(current, str) else getattr(current, "__module__", "")
    if not where.startswith("dsteer_eval"):
        objs["steered"] = OUR_TARGET
    objs.setdefault(BUILTIN_ALIAS, BUILTIN_TARGET)
    objs.setdefault(OUR_ALIAS, OUR_TARGET)
    objs.setdefault(VLLM_ALIAS, VLLM_TARGET)
    models = sys.modules.get("lm_eval.models")
    mapping = getattr(models, "MODEL_MAPPING", None)
    if isinstance(mapping, dict):
        mapping["steered"] = OUR_TARGET
        mapping[BUILTIN_ALIAS] = BUILTIN_TARGET
        mapping[OUR_ALIAS] = OUR_TARGET
        mapping[VLLM_ALIAS] = VLLM_TARGET


def _add_our_tasks_to_task_manager() -> None:
    """Every TaskManager that includes lm-eval's tasks also indexes ours (user paths win)."""
    manager = sys.modules["lm_eval.tasks.manager"]
    cls = manager.TaskManager
    if getattr(cls.__init__, "_dsteer", False):
        return
    original = cls.__init__

    def __init__(self, *args, include_path=None, include_defaults=True, **kwargs):
        if include_defaults:
            user = include_path if isinstance(include_path, (list, tuple)) else [include_path]
            include_path = [tasks_dir(), *[p for p in user if p]]
        original(self, *args, include_path=include_path, include_defaults=include_defaults, **kwargs)

    __init__._dsteer = True
    __init__.__doc__ = original.__doc__
    cls.__init__ = __init__


def _around_builtin_steered(run_module) -> None:
    from lm_eval.api.registry import model_registry  # deferred: lm-eval internals load only when this path runs

    objs = model_registry._objs
    saved = objs.get("steered")
    objs["steered"] = BUILTIN_TARGET  # lets the built-in decorator "upgrade" its placeholder
    try:
        run_module()
    finally:
        builtin = objs.get("steered")
        if builtin is not None and not isinstance(builtin, str):
            objs[BUILTIN_ALIAS] = builtin
        objs["steered"] = saved if saved is not None else OUR_TARGET


_AFTER = {
    "lm_eval.models": _point_registry_at_us,
    "lm_eval.tasks.manager": _add_our_tasks_to_task_manager,
}
_AROUND = {"lm_eval.models.hf_steered": _around_builtin_steered}


class _LmEvalFinder:  # a meta-path finder (importlib.abc is not imported: start-up cost)
    """Wraps the loaders of a few lm-eval modules; finds nothing itself."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _AFTER and fullname not in _AROUND:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
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
            if _name in _AROUND:
                _AROUND[_name](lambda: _original(module))
            else:
                _original(module)
                _AFTER[_name]()

        loader.exec_module = exec_module
        return spec


def install() -> None:
    """Called from ``dsteer_eval.pth``; cheap, idempotent, never raises."""
    try:
        from dsteer_eval.common.redaction import install_log_redaction

        install_log_redaction()  # every log record of this process, lm-eval's included
        if any(isinstance(f, _LmEvalFinder) for f in sys.meta_path):
            return
        sys.meta_path.insert(0, _LmEvalFinder())
        for name, after in _AFTER.items():  # lm-eval imported before us
            if name in sys.modules:
                after()
    except Exception as exc:  # pragma: no cover - a broken hook must not break Python
        print(f"dsteer-eval: lm_eval hook not installed: {exc}", file=sys.stderr)


def register() -> None:
    """Explicit registration for sessions started without the ``.pth`` hook."""
    install()
    import lm_eval.models  # noqa: F401  (runs the hook)
    import lm_eval.tasks.manager  # noqa: F401

    for after in _AFTER.values():
        after()
