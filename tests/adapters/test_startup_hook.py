"""The start-up hook stays out of other programs' way (issue 33 items 7, 11, 12).

* it imports nothing of ``dsteer_eval`` at interpreter start, so a checkout run from its own folder uses its
  own code even in a venv whose editable install points at another checkout (item 11);
* the log redaction is installed only when lm-eval is imported, and then covers lm-eval's and dsteer-eval's
  records, not another program's; exceptions keep ``exc_info`` (item 12);
* lm-eval's "Initializing ... with arguments: {...}" line, a dict, is redacted (item 7).

Each runs in a fresh interpreter of the test venv, where the wheel's ``dsteer_eval.pth`` is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": ""}


def run_py(code: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                          env={**ENV, **(env or {})}, timeout=300)


def test_the_hook_is_installed_and_imports_nothing_of_the_package_at_start():
    done = run_py("import sys; print(sorted(m for m in sys.modules if 'dsteer' in m and 'editable' not in m)); "
                  "print([type(f).__name__ for f in sys.meta_path])")
    modules, finders = done.stdout.splitlines()
    assert modules == "['_dsteer_eval_startup']"  # the top-level hook module only, no dsteer_eval
    assert "_LmEvalFinder" in finders
    site_hook = next(Path(p) / "_dsteer_eval_startup.py" for p in sys.path
                     if (Path(p) / "_dsteer_eval_startup.py").is_file())
    assert site_hook.read_text() == (REPO / "adapters" / "startup_hook.py").read_text()  # the installed copy is current


def test_another_checkout_run_from_its_folder_uses_its_own_code(tmp_path):
    """A clone of the repository, run from its root with the venv's python (whose editable install points at
    this checkout): its own package, adapters and tasks are imported, also after lm-eval loads the plugin."""
    clone = tmp_path / "clone"
    for part in ("dsteer_eval", "adapters", "tasks"):
        shutil.copytree(REPO / part, clone / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", clone / "pyproject.toml")
    (clone / "dsteer_eval" / "report" / "__init__.py").write_text('WHICH = "the clone"\n')
    done = run_py("import dsteer_eval.report as r; print(r.WHICH)\n"
                  "import lm_eval.models, lm_eval.tasks.manager\n"
                  "import dsteer_eval, dsteer_eval.adapters.plugin as p, dsteer_eval.tasks as t\n"
                  "from dsteer_eval.common.package_files import tasks_dir\n"
                  "print(dsteer_eval.__file__); print(p.__file__); print(t.__file__); print(tasks_dir())\n"
                  "from lm_eval.api.registry import get_model; print(get_model('steered').__module__)\n"
                  "import sys; print(sys.modules['dsteer_eval.adapters.steered'].__file__)", cwd=clone)
    assert done.returncode == 0, done.stderr[-3000:]
    which, package, plugin, tasks, tasks_folder, model, steered = done.stdout.splitlines()
    assert which == "the clone"
    for path in (package, plugin, tasks, tasks_folder, steered):
        assert path.startswith(str(clone)), path
    assert model == "dsteer_eval.adapters.steered"


LOGS = r"""
import io, logging, sys
stream = io.StringIO()
handler = logging.StreamHandler(stream)
handler.setFormatter(logging.Formatter("%(name)s|%(message)s"))
logging.getLogger().addHandler(handler)
logging.getLogger().setLevel(logging.INFO)
kept = []
class Keep(logging.Handler):
    def emit(self, record):
        kept.append((record.name, record.exc_info is not None))
logging.getLogger().addHandler(Keep())
if sys.argv[1] == "lm_eval":
    import lm_eval  # the hook installs the redaction now
for name in ("otherprog", "lm_eval.evaluator", "dsteer_eval.sweep"):
    log = logging.getLogger(name)
    log.info("value %s", "the-env-secret-123456")
    try:
        raise RuntimeError("plain failure")
    except RuntimeError:
        log.exception("failed")
log = logging.getLogger("lm_eval.evaluator")
log.info("Initializing %s model, with arguments: %s", "steered",
         {"pretrained": "m", "hf_token": "hf_dictSecretValue42", "pad_token": "<|endoftext|>"})
log.info('json %s', '{"api_key": "sk-jsonSecretValue42", "max_new_tokens": "12345678"}')
print(stream.getvalue())
print("KEPT", kept)
"""


def test_redaction_waits_for_lm_eval_and_covers_only_its_records_and_ours():
    env = {"MY_SERVICE_API_KEY": "the-env-secret-123456"}
    before = run_py(LOGS.replace("sys.argv[1]", "'plain'"), env=env)
    assert before.returncode == 0, before.stderr
    assert "<redacted>" not in before.stdout  # a program that never imports lm-eval is left alone
    assert "otherprog|value the-env-secret-123456" in before.stdout

    after = run_py(LOGS.replace("sys.argv[1]", "'lm_eval'"), env=env)
    assert after.returncode == 0, after.stderr
    out = after.stdout
    assert "otherprog|value the-env-secret-123456" in out  # another program's record, untouched
    assert "lm_eval.evaluator|value <redacted>" in out and "dsteer_eval.sweep|value <redacted>" in out
    # lm-eval's start-up line is a dict: the secret key's value is masked, a special token is not
    assert "'hf_token': '<redacted>'" in out and "hf_dictSecretValue42" not in out
    assert "'pad_token': '<|endoftext|>'" in out and "'pretrained': 'm'" in out
    assert '"api_key": "<redacted>"' in out and "sk-jsonSecretValue42" not in out
    assert '"max_new_tokens": "12345678"' in out
    # exceptions keep exc_info everywhere (Sentry, rich, caplog read it); the traceback is still printed
    kept = out.split("KEPT ", 1)[1]
    assert "('otherprog', True)" in kept and "('lm_eval.evaluator', True)" in kept
    assert "('dsteer_eval.sweep', True)" in kept
    assert out.count("RuntimeError: plain failure") == 3


def test_a_traceback_holding_a_secret_is_printed_redacted_and_not_handed_on():
    code = (LOGS.replace("sys.argv[1]", "'lm_eval'").split("for name in")[0] +
            "try:\n    raise RuntimeError('rejected the-env-secret-123456')\n"
            "except RuntimeError:\n    logging.getLogger('lm_eval.x').exception('boom')\n"
            "print(stream.getvalue()); print('KEPT', kept)")
    done = run_py(code, env={"MY_SERVICE_API_KEY": "the-env-secret-123456"})
    assert done.returncode == 0, done.stderr
    assert "RuntimeError: rejected <redacted>" in done.stdout and "the-env-secret-123456" not in done.stdout
    assert "('lm_eval.x', False)" in done.stdout  # a secret-bearing exception is not handed to other handlers


@pytest.mark.parametrize("model", ["steered"])
def test_lm_evals_initializing_line_prints_no_model_arg_secret(tiny_dir, tmp_path, model):
    """The plain CLI logs the parsed model args before our model exists; the secret never reaches stderr."""
    secret = "hf_initLineSecret0123456789"
    done = subprocess.run([sys.executable, "-m", "lm_eval", "--model", model, "--model_args",
                           f"pretrained={tiny_dir},hf_token={secret},layer=final,alpha=0,vector=none",
                           "--tasks", "dsteer_refusal_ll_mini", "--limit", "1"],
                          capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=600)
    assert "Initializing steered model" in done.stderr
    assert secret not in done.stderr and secret not in done.stdout
