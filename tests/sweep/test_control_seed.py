"""Each sweep draws its own random directions: a control seed derived from the sweep (reproducible anywhere),
recorded in sweep.json and its provenance, kept on resume, and overridable — never one population for all."""

from __future__ import annotations

import json

import pytest

from test_sweep import config
from test_tasks import write_vector


@pytest.fixture(scope="module", autouse=True)
def one_task_index():
    """Every plan here indexes the same tasks: build lm-eval's task index once (it takes seconds), not per plan."""
    import lm_eval.tasks

    real, built = lm_eval.tasks.TaskManager, {}

    def shared(include_path=None, **kwargs):
        if include_path not in built:
            built[include_path] = real(include_path=include_path, **kwargs)
        return built[include_path]

    lm_eval.tasks.TaskManager = shared
    yield
    lm_eval.tasks.TaskManager = real


@pytest.fixture(scope="module")
def vec(tiny, tmp_path_factory):
    return write_vector(tmp_path_factory.mktemp("seedvec") / "v.safetensors", tiny[0])


def _plan(tiny_dir, vec, out, **overrides):
    from dsteer_eval.sweep.runner import plan_sweep

    return plan_sweep(config(tiny_dir, vec, out, controls="random:2", **overrides))


def test_each_sweep_derives_its_own_seed_and_the_same_sweep_the_same_one(tiny_dir, vec, tmp_path):
    from dsteer_eval.sweep.control_seed import derived_seed

    a = _plan(tiny_dir, vec, tmp_path / "a")
    again = _plan(tiny_dir, vec, tmp_path / "elsewhere" / "b")  # another folder: the same sweep, the same seed
    other_grid = _plan(tiny_dir, vec, tmp_path / "c", alphas="-1,0,1")
    other_task = _plan(tiny_dir, vec, tmp_path / "d", tasks="dsteer_hh_mini,dsteer_refusal_mini")
    seeds = [p.settings["control_seed"] for p in (a, again, other_grid, other_task)]
    assert seeds[0] == seeds[1] and len({seeds[0], seeds[2], seeds[3]}) == 3
    assert seeds[0] == derived_seed(a.settings, tasks=a.tasks, layers=a.layers, alphas=a.alphas, base_alphas=(),
                                    controls=2)
    assert a.control_seed_source.startswith("derived")
    assert f"control_seed={seeds[0]}" in a.load_args.split(",")
    control = next(p for p in a.points if p.control == 1)
    assert a.point_args(control).endswith(f",control=random:1,control_seed={seeds[0]}")  # as plain lm_eval takes it
    assert "control_seed" not in a.point_args(next(p for p in a.points if p.control is None))
    # without controls there is no seed to record
    from dsteer_eval.sweep.runner import plan_sweep

    assert plan_sweep(config(tiny_dir, vec, tmp_path / "e")).settings["control_seed"] is None


def test_a_given_seed_wins_and_two_that_disagree_are_refused(tiny_dir, vec, tmp_path):
    assert _plan(tiny_dir, vec, tmp_path / "a", control_seed=7).settings["control_seed"] == 7
    given = _plan(tiny_dir, vec, tmp_path / "b", model_args=f"pretrained={tiny_dir},vector={vec},control_seed=5")
    assert given.settings["control_seed"] == 5 and given.load_args.count("control_seed") == 1
    assert given.control_seed_source.startswith("model_args")
    with pytest.raises(ValueError, match="--control-seed 6 and control_seed=5 in --model-args disagree"):
        _plan(tiny_dir, vec, tmp_path / "c", model_args=f"pretrained={tiny_dir},vector={vec},control_seed=5",
              control_seed=6)
    with pytest.raises(ValueError, match="--control-seed=-1: the control seed must be >= 0"):
        _plan(tiny_dir, vec, tmp_path / "d", control_seed=-1)


def _record(out, settings, controls=True):
    out.mkdir(parents=True)
    points = [{"name": "unsteered", "side": "dpo", "layer": None, "alpha": 0.0, "control": None}]
    if controls:
        points.append({"name": "L2_a-1_random0", "side": "dpo", "layer": "2", "alpha": -1.0, "control": 0})
    (out / "sweep.json").write_text(json.dumps({"format": "dsteer-eval/sweep", "settings": settings, "points": points}))


def test_a_resume_keeps_the_recorded_seed_and_a_sweep_from_before_seeds_keeps_0(tiny_dir, vec, tmp_path):
    fresh = _plan(tiny_dir, vec, tmp_path / "fresh").settings
    recorded = {**fresh, "control_seed": 12345}
    _record(tmp_path / "r", recorded)
    plan = _plan(tiny_dir, vec, tmp_path / "r")
    assert plan.settings["control_seed"] == 12345 and plan.control_seed_source == "the resumed sweep's seed"
    with pytest.raises(ValueError, match=r"control_seed: 12345 then, 9 now \(other random directions\)"):
        _plan(tiny_dir, vec, tmp_path / "r", control_seed=9)
    assert _plan(tiny_dir, vec, tmp_path / "r", control_seed=9, overwrite=True).settings["control_seed"] == 9
    legacy = {k: v for k, v in fresh.items() if k != "control_seed"}  # written before seeds were recorded
    _record(tmp_path / "old", legacy)
    assert _plan(tiny_dir, vec, tmp_path / "old").settings["control_seed"] == 0
    with pytest.raises(ValueError, match="control_seed: 0 then, 3 now"):
        _plan(tiny_dir, vec, tmp_path / "old", control_seed=3)
    _record(tmp_path / "none", legacy, controls=False)  # no controls ran: controls added now take a fresh seed
    assert _plan(tiny_dir, vec, tmp_path / "none").settings["control_seed"] == fresh["control_seed"]


def test_the_seed_reaches_the_model_and_the_provenance(tiny_dir, vec, tmp_path):
    from dsteer_eval.sweep.runner import _load, run_provenance

    plan = _plan(tiny_dir, vec, tmp_path / "a")
    lm = _load(plan)
    assert lm.steer_args.control_seed == plan.settings["control_seed"] != 0
    seeds = run_provenance(plan)["seeds"]
    assert seeds["controls"] == plan.settings["control_seed"] and seeds["controls_source"].startswith("derived")
