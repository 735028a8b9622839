"""The start-up hook: plain `lm_eval` reaches our adapter and tasks; start-up stays cheap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def run_py(code: str, python=sys.executable, cwd=None) -> str:
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, env=ENV, cwd=cwd).stdout


def test_startup_imports_neither_torch_nor_lm_eval():
    out = run_py(
        "import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch','lm_eval','transformers','numpy','importlib.abc'))); "
        "print([type(f).__name__ for f in sys.meta_path])"
    )
    mods, finders = out.splitlines()
    assert mods == "[]"
    assert "_LmEvalFinder" in finders


def test_lm_eval_registry_sees_our_model_and_builtin_alias():
    out = run_py(
        "from lm_eval.api.registry import get_model\n"
        "print(get_model('steered').__module__)\n"
        "import lm_eval.models.hf_steered\n"
        "print(get_model('steered').__module__, get_model('steered-builtin').__module__)\n"
        "from lm_eval.models import MODEL_MAPPING; print(MODEL_MAPPING['steered'])"
    )
    assert out.split() == [
        "dsteer_eval.adapters.steered",
        "dsteer_eval.adapters.steered",
        "lm_eval.models.hf_steered",
        "dsteer_eval.adapters.steered:SteeredLM",
    ]


def test_the_dsteer_alias_works_with_the_hook_and_through_the_ordinary_registry_without_it():
    """`dsteer` is our model under a name lm-eval does not ship: the start-up hook maps it lazily, and
    without the hook (python -S: no .pth runs) importing the model module registers it the way lm-eval's
    plugin guide describes (@register_model)."""
    with_hook = run_py("from lm_eval.api.registry import get_model\n"
                       "print(get_model('dsteer').__name__, get_model('dsteer') is get_model('steered'))")
    assert with_hook.split() == ["SteeredLM", "True"]
    site = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "lm_eval").is_dir())
    code = (f"import sys; sys.path.append({site!r}); sys.path.insert(0, {str(REPO)!r})\n"  # no .pth file runs
            "import lm_eval.api.registry as registry\n"
            "print(any(type(f).__name__ == '_LmEvalFinder' for f in sys.meta_path), 'dsteer' in registry.model_registry)\n"
            "import dsteer_eval.adapters.steered as steered\n"
            "print(registry.get_model('dsteer') is steered.SteeredLM)")
    without = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                             env=ENV).stdout
    assert without.split() == ["False", "False", "True"]


def test_plain_cli_runs_our_adapter_and_matches_in_process(tiny_dir, tmp_path, tiny):
    """`lm_eval --model steered --model_args ...,alpha=-1.0` in a subprocess, no extra flags."""
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    from dsteer_eval.vectors import save_vectors

    vec = tmp_path / "v.safetensors"
    g = torch.Generator().manual_seed(3)
    save_vectors(vec, {s: torch.randn(32, generator=g) for s in range(5)}, model=tiny[0])
    args = f"pretrained={tiny_dir},vector={vec},layer=final,alpha=-1.0,position=completion"
    proc = subprocess.run(
        [str(BIN / "lm_eval"), "--model", "steered", "--model_args", args, "--tasks", "dsteer_hh_mini",
         "--limit", "5", "--batch_size", "4", "--output_path", str(tmp_path / "out"), "--log_samples"],
        capture_output=True, text=True, env=ENV, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dsteer_hh_mini" in proc.stdout and "acc" in proc.stdout
    samples = next((tmp_path / "out").rglob("samples_dsteer_hh_mini_*.jsonl"))
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 5
    lm = get_model("steered")(pretrained=tiny_dir, vector=str(vec), layer="final", alpha=-1.0, position="completion")
    for row in rows:
        reqs = [Instance("loglikelihood", {}, (a["arg_0"], a["arg_1"]), 0) for a in row["arguments"].values()]
        want = [ll for ll, _ in lm.loglikelihood(reqs)]
        got = [float(r[0][0]) for r in row["resps"]]
        assert got == pytest.approx(want, abs=1e-4)


@pytest.mark.embedded
def test_wheel_ships_hook_adapters_and_tasks_and_works_installed(tmp_path, embedded_dir):
    """`pip install .` (not editable): build the wheel, install it into a bare venv, use it; the plain
    ``lm_eval`` command then steers the embedded pair from a folder outside the checkout."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(REPO)],
                   check=True, capture_output=True, env=ENV)
    wheel = next(wheel_dir.glob("dsteer_eval-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "dsteer_eval.pth" in names
    # the top-level adapters/ and tasks/ are installed inside the package (pyproject's package-dir)
    assert "dsteer_eval/adapters/steered.py" in names and "dsteer_eval/adapters/plugin.py" in names
    assert "dsteer_eval/tasks/hh/dsteer_hh_mini.yaml" in names and "dsteer_eval/tasks/hh/hh_mini.jsonl" in names
    tasks_here = sorted(str(p.relative_to(REPO / "tasks")) for p in (REPO / "tasks").rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts)
    missing = [t for t in tasks_here if f"dsteer_eval/tasks/{t}" not in names]
    assert missing == [], f"task files left out of the wheel: {missing}"
    assert "dsteer_eval/metrics/perspective.py" in names
    assert not any(n.startswith(("adapters/", "tasks/")) for n in names), "claims a top-level import name"
    record = next(n for n in names if n.endswith("RECORD"))
    assert "dsteer_eval.pth,sha256=" in zipfile.ZipFile(wheel).read(record).decode()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True, env=ENV)
    # dependencies come from the test venv, appended *after* the new site-packages
    deps = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "lm_eval").is_dir())
    (site / "zz_deps.pth").write_text(deps + "\n")
    out = run_py(
        "import dsteer_eval, sys; print(dsteer_eval.__file__)\n"
        "from lm_eval.api.registry import get_model; print(get_model('steered').__module__)\n"
        "from lm_eval.tasks import TaskManager; tm = TaskManager()\n"
        "print(all(t in tm.all_tasks for t in ('dsteer_hh_mini', 'dsteer_mini', 'dsteer_toxicity_mini')))\n"
        "tm.load(['dsteer_hh_mini'])",
        python=str(venv / "bin" / "python"), cwd=tmp_path,  # outside the checkout: a checkout's cwd would win
    )
    file, module, has_task = out.split()
    assert file.startswith(str(site)), file
    assert module == "dsteer_eval.adapters.steered" and has_task == "True"
    # the done-means: plain lm_eval, the wheel's adapter, tasks and shipped pair, outside the checkout
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "lm_eval", "--model", "steered", "--model_args",
                           "alpha=-1.0", "--tasks", "dsteer_refusal_ll", "--limit", "4", "--output_path", "out"],
                          cwd=outside, capture_output=True, text=True, env={**ENV, "PYTHONPATH": ""}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next((outside / "out").rglob("results_*.json")).read_text())
    assert results["results"]["dsteer_refusal_ll"]["refusal_acc,none"] >= 0  # a number was measured
    assert results["config"]["model"] == "steered"

