"""Sweeps with the base side (adapter off) and random-direction controls, and the per-document values
that paired statistics are computed from."""

from __future__ import annotations

import json

import pytest

from test_sweep import _requests, config
from test_tasks import write_vector


@pytest.fixture(scope="module")
def vec(tiny, tmp_path_factory):
    return write_vector(tmp_path_factory.mktemp("ctlvec") / "v.safetensors", tiny[0])


def test_grid_with_base_side_and_controls():
    from dsteer_eval.sweep.grid import Point, points

    grid = points((2,), (-1.0, 0.0, 1.0), base_alphas=(0.0, 1.0), controls=2)
    assert [p.name for p in grid] == [
        "unsteered", "L2_a-1", "L2_a-1_random0", "L2_a-1_random1", "L2_a1", "L2_a1_random0", "L2_a1_random1",
        "base", "base_L2_a1", "base_L2_a1_random0", "base_L2_a1_random1"]
    assert Point(2, -1.0, "dpo", 1).model_args("pretrained=x,peft=/a") == \
        "pretrained=x,peft=/a,layer=2,alpha=-1,control=random:1"
    assert Point(None, 0.0, "base").model_args("pretrained=x,peft=/a") == "pretrained=x,peft=none,alpha=0"
    assert Point(2, 1.0, "base").model_args("") == "peft=none,layer=2,alpha=1"


def test_base_alphas_need_an_adapter(tiny_dir, vec, tmp_path):
    from dsteer_eval.sweep.runner import plan_sweep

    plan = plan_sweep(config(tiny_dir, vec, tmp_path / "a"))  # no adapter: auto gives no base side
    assert all(p.side == "dpo" for p in plan.points)
    with pytest.raises(ValueError, match="--base-alphas: the model has no PEFT adapter"):
        plan_sweep(config(tiny_dir, vec, tmp_path / "b", base_alphas="0,1"))
    with pytest.raises(ValueError, match="--controls"):
        plan_sweep(config(tiny_dir, vec, tmp_path / "c", controls="gauss"))


def test_base_side_and_controls_equal_separate_runs(tiny_dir, vec, tiny_adapter_dir):
    """Switching sides and controls on one loaded model, with shared lower layers, gives exactly what a
    fresh `steered` model with the point's model args gives (peft=none, control=random:i)."""
    from dsteer_eval.adapters.steered import SteeredLM
    from dsteer_eval.sweep.sweep_lm import SweepLM

    kwargs = {"pretrained": tiny_dir, "vector": vec, "batch_size": 4}
    requests = _requests()
    lm = SweepLM(**kwargs, peft=tiny_adapter_dir, layer=2, alpha=0.0)
    order = [("dpo", 0.0, None), ("dpo", -2.0, None), ("dpo", -2.0, 0), ("base", 0.0, None), ("base", 1.5, None),
             ("base", 1.5, 1), ("dpo", 1.5, None)]
    seen = {}
    for side, alpha, control in order:
        lm.set_point(2, alpha, side, control)
        got = lm.loglikelihood(requests, disable_tqdm=True)
        extra = {"peft": "none" if side == "base" else tiny_adapter_dir}
        if control is not None:
            extra["control"] = f"random:{control}"
        want = SteeredLM(**kwargs, **extra, layer=2, alpha=alpha).loglikelihood(requests, disable_tqdm=True)
        assert [g[1] for g in got] == [w[1] for w in want]
        assert max(abs(g[0] - w[0]) for g, w in zip(got, want)) <= 1e-4, (side, alpha, control)
        seen[(side, alpha, control)] = [g[0] for g in got]
    assert lm.shared.stats["replayed"] > 0
    assert seen[("base", 0.0, None)] != seen[("dpo", 0.0, None)]  # the adapter really is off on the base side
    assert seen[("dpo", -2.0, 0)] != seen[("dpo", -2.0, None)]  # the control is another direction


def test_sweep_writes_per_doc_values_for_every_unit(tiny_dir, vec, tiny_adapter_dir, tmp_path):
    from dsteer_eval.sweep.runner import run_sweep

    out = tmp_path / "out"
    failures = run_sweep(config(tiny_dir, vec, out, model_args=f"pretrained={tiny_dir},vector={vec},peft={tiny_adapter_dir}",
                                alphas="-1,0,1", controls="random:1"), print_fn=lambda *_: None)
    assert failures == 0
    names = sorted(p.name for p in (out / "points").iterdir())
    assert names == sorted(["unsteered", "L2_a-1", "L2_a-1_random0", "L2_a1", "L2_a1_random0", "base", "base_L2_a1",
                            "base_L2_a1_random0"])
    for name in names:
        unit = out / "points" / name / "dsteer_hh_mini"
        per_doc = json.loads((unit / "per_doc.json").read_text())["tasks"]["dsteer_hh_mini"]
        results = json.loads(next(unit.glob("results_*.json")).read_text())
        assert per_doc["doc_id"] == [0, 1, 2]
        acc = per_doc["metrics"]["acc"]
        assert sum(acc) / len(acc) == pytest.approx(results["results"]["dsteer_hh_mini"]["acc,none"], abs=1e-12)
        assert all(len(r) == 2 and all(isinstance(x, float) for x in r) for r in per_doc["resps"])
        model_args = results["config"]["model_args"]
        assert ("peft=none" in model_args) == name.startswith("base")
        assert ("control=random:0" in model_args) == name.endswith("random0")
    record = json.loads((out / "sweep.json").read_text())
    assert [p["name"] for p in record["points"]][:3] == ["unsteered", "L2_a-1", "L2_a-1_random0"]
