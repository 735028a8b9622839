"""``dsteer-eval sweep --backend vllm`` gives the HF sweep's per-document numbers (within the fp32 tolerance of
test_steered_vllm) on both sides and for the random controls, with one engine per side loaded once and each
side's points run in one pass (each request carrying its own steering)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm.entrypoints.llm")  # the vLLM venv only (scripts/setup_vllm.sh)

from dsteer_eval.adapters import plugin  # noqa: E402
from dsteer_eval.sweep.runner import SweepConfig, run_sweep  # noqa: E402

TOLERANCE = 5e-4


def _values(out):
    found = {}
    for per_doc in sorted(out.glob("points/*/*/per_doc.json")):
        task = json.loads(per_doc.read_text())["tasks"]["dsteer_refusal_ll"]
        found[per_doc.parent.parent.name] = task["metrics"]["refusal_margin"]
    return found


def test_a_vllm_sweep_equals_the_hf_sweep(tmp_path, monkeypatch):
    plugin.register()
    from dsteer_eval.sweep import vllm_lm

    started, runs = [], []
    real = vllm_lm.SteeredVLLM

    def counted(**kwargs):
        started.append(kwargs.get("peft"))
        lm = real(**kwargs)
        inner = lm._run
        lm._run = lambda prompts, params: runs.append((kwargs.get("peft"), lm._slot, len(prompts))) or \
            inner(prompts, params)
        return lm

    monkeypatch.setattr(vllm_lm, "SteeredVLLM", counted)
    common = dict(alphas="-1,0", base_alphas="0,1", controls="random:1", control_seed=0, tasks="dsteer_refusal_ll",
                  limit=4)  # one seed: the two backends steer with the same random direction
    assert run_sweep(SweepConfig(model_args="pair=refusal", output=str(tmp_path / "hf"), **common),
                     print_fn=lambda *_: None) == 0
    assert run_sweep(SweepConfig(model_args="pair=refusal,gpu_memory_utilization=0.15,max_model_len=1024",
                                 output=str(tmp_path / "vllm"), backend="vllm", **common), print_fn=lambda *_: None) == 0
    hf, vl = _values(tmp_path / "hf"), _values(tmp_path / "vllm")
    assert sorted(hf) == sorted(vl) == ["L20_a-1", "L20_a-1_random0", "base", "base_L20_a1", "base_L20_a1_random0",
                                        "unsteered"]
    for point in hf:
        assert max(abs(a - b) for a, b in zip(hf[point], vl[point])) <= TOLERANCE, point
    assert started == [None, "none"]  # one engine per side, each loaded once
    # per-request steering: each side's three points ran in the first point's passes (8 requests x 3 settings)
    assert {slot for _, slot, _ in runs} == {0}
    assert [sum(n for side, _, n in runs if side == s) for s in (None, "none")] == [24, 24]
    record = json.loads((tmp_path / "vllm" / "sweep.json").read_text())
    assert record["settings"]["backend"] == "vllm"
    with pytest.raises(ValueError, match="--backend vllm: --probes"):
        run_sweep(SweepConfig(model_args="pair=refusal", output=str(tmp_path / "p"), backend="vllm", probes=True,
                              **common))


def test_a_collapsed_point_fails_and_is_not_a_finished_unit(tmp_path):
    """One point of a held group collapses (alpha*v fits float32, the state does not): it is recorded as failed
    (failed.json, NonFiniteStateError, as the HF sweep records it) and is not a finished unit, so a resume
    redoes it; the group's other points, run in the same engine pass, finish with their own numbers."""
    from dsteer_eval.sweep.units import unit_done

    plugin.register()
    out = tmp_path / "vllm"
    config = SweepConfig(model_args="pair=refusal,gpu_memory_utilization=0.15,max_model_len=1024", output=str(out),
                         backend="vllm", alphas="-1,-6.23e28,0", base_alphas="none", tasks="dsteer_refusal_ll",
                         limit=4)
    assert run_sweep(config, print_fn=lambda *_: None) == 1
    units = {p.name: p / "dsteer_refusal_ll" for p in (out / "points").iterdir()}
    assert sorted(units) == ["L20_a-1", "L20_a-6.23e+28", "unsteered"]
    assert [name for name, unit in sorted(units.items()) if unit_done(unit)] == ["L20_a-1", "unsteered"]
    failed = json.loads((units["L20_a-6.23e+28"] / "failed.json").read_text())
    assert failed["error"].startswith("NonFiniteStateError: steered model (")
    assert "alpha=-6.23e+28" in failed["error"] and "a forward pass collapsed" in failed["error"]
    assert not list(units["L20_a-6.23e+28"].glob("results_*.json"))
    margins = _values(out)
    assert sorted(margins) == ["L20_a-1", "unsteered"] and margins["L20_a-1"] != margins["unsteered"]
