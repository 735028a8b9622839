"""Connect dsteer-eval to the plain ``lm_eval`` command.

lm-eval 0.4.13 has no plugin entry points, already maps ``steered`` to its own
``SteeredModel``, and refuses a second registration of a name.  So the wheel
installs ``dsteer_eval.pth`` into site-packages, whose single line runs the
start-up hook (:mod:`dsteer_eval.adapters.startup_hook`, installed at the root
of site-packages as ``_dsteer_eval_startup``): a tiny finder on ``sys.meta_path``
that imports nothing of this package until lm-eval itself is imported, and then
calls the functions below:

* after ``lm_eval`` runs (:func:`on_lm_eval`), the log redaction covers
  lm-eval's and dsteer-eval's records (``common.redaction``; scoped to those
  loggers, not to every program of the venv);
* after ``lm_eval.models`` runs (:func:`on_models`), ``steered`` points (lazily)
  at ``dsteer_eval.adapters.steered:SteeredLM`` and lm-eval's original class
  stays reachable as ``steered-builtin``;
* after ``lm_eval.tasks.manager`` runs (:func:`on_task_manager`), every
  ``TaskManager`` that includes lm-eval's own tasks also indexes our ``tasks/``
  (``dsteer_eval.tasks``; a user's ``--include_path`` is indexed after ours, so
  it can override our names);
* while ``lm_eval.models.hf_steered`` runs (:func:`around_builtin_steered`), its
  ``@register_model("steered")`` is let through and then redirected to
  ``steered-builtin``, so importing the built-in class (our adapter delegates
  to it) never raises.

Without the ``.pth`` (e.g. a source checkout on ``PYTHONPATH``), call
:func:`register` before using lm-eval from Python.
"""

from __future__ import annotations

import sys

from dsteer_eval.adapters import startup_hook
from dsteer_eval.common.package_files import tasks_dir  # noqa: F401  (re-exported; the start-up hook needs it)
from dsteer_eval.common.redaction import install_log_redaction

OUR_TARGET = "dsteer_eval.adapters.steered:SteeredLM"
BUILTIN_TARGET = "lm_eval.models.hf_steered:SteeredModel"
BUILTIN_ALIAS = "steered-builtin"
OUR_ALIAS = "dsteer"  # the same model under a name lm-eval does not ship (registered by steered.py itself too)
VLLM_ALIAS, VLLM_TARGET = "steered-vllm", "dsteer_eval.adapters.steered_vllm:SteeredVLLM"  # loads only when asked for


def on_lm_eval() -> None:
    """lm-eval was imported: its records and ours are redacted from now on (scoped; other loggers untouched)."""
    install_log_redaction(scope="lm_eval")


def on_models() -> None:
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


def on_task_manager() -> None:
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


def around_builtin_steered(run_module) -> None:
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


def _after_functions():
    return {name: globals()[function] for name, function in startup_hook.AFTER.items()}


def install() -> None:
    """The start-up hook, installed from Python (the ``.pth`` does the same at interpreter start); when lm-eval
    is already imported, its plugin functions run now. Idempotent."""
    startup_hook.install()
    for name, after in _after_functions().items():  # lm-eval imported before us
        if name in sys.modules:
            after()


def register() -> None:
    """Explicit registration for sessions started without the ``.pth`` hook."""
    install()
    import lm_eval.models  # noqa: F401  (runs the hook)
    import lm_eval.tasks.manager  # noqa: F401

    for after in _after_functions().values():
        after()
