"""The strength ceiling (judge-free), relative alpha grids, and unit=norm."""

from __future__ import annotations

import json

import pytest
import torch

from dsteer_eval.sweep import ceiling


def test_ceiling_is_the_largest_strength_that_keeps_outputs_sound(monkeypatch):
    """Fake generations: the negative side loops from |α| = 2 on, the positive side's perplexity
    explodes from 1 on; the ceilings are 1 and 0.5, and the grid stops at the first failure."""
    def generate(model, tok, prompts, interventions, max_new_tokens, batch_size, **how):
        a = interventions[0].alpha if interventions else 0.0
        if a <= -2:
            return ["go go go go go go go go go go go go"] * len(prompts)
        return [f"A fine answer at {a}." for _ in prompts]

    def perplexity(model, tok, prompts, texts, batch_size):
        a = float(texts[0].split(" at ")[1].rstrip(".")) if texts else None
        return None if a is None else (50.0 if a >= 1 else 10.0)

    monkeypatch.setattr(ceiling, "_generate", generate)
    monkeypatch.setattr(ceiling, "_perplexity", perplexity)
    got = ceiling.find_ceiling(None, None, ["p1", "p2"], torch.ones(4), 2, start=0.25, steps=6)
    assert got["negative"]["ceiling"] == 1.0 and got["positive"]["ceiling"] == 0.5
    assert [g["alpha"] for g in got["negative"]["grid"]] == [-0.25, -0.5, -1.0, -2.0]
    assert got["negative"]["grid"][-1] == {"alpha": -2.0, "degenerate": 1.0, "perplexity": None, "passed": False}
    assert [g["passed"] for g in got["positive"]["grid"]] == [True, True, False]
    assert ceiling.relative_alphas((-1, -0.5, 0, 0.5, 1), got) == (-1.0, -0.5, 0.0, 0.25, 0.5)


def test_relative_grids_refuse_a_zero_ceiling_and_parse():
    data = {"negative": {"ceiling": 0.0}, "positive": {"ceiling": 2.0}}
    with pytest.raises(ValueError, match="negative side's ceiling is 0"):
        ceiling.relative_alphas((-1, 1), data)
    assert ceiling.relative_alphas((0, 1), data) == (0.0, 2.0)
    assert ceiling.parse_relative("auto") == (-1.0, -0.5, 0.0, 0.5, 1.0)
    assert ceiling.parse_relative("rel:-1,0,1") == (-1.0, 0.0, 1.0)
    assert ceiling.parse_relative("-1,0,1") is None


def test_sweep_with_relative_alphas_uses_the_ceiling_file(tiny_dir, tmp_path, tiny):
    from test_tasks import write_vector

    from dsteer_eval.sweep.runner import SweepConfig, plan_sweep

    vec = write_vector(tmp_path / "v.safetensors", tiny[0])
    file = tmp_path / "ceiling.json"
    file.write_text(json.dumps({"format": ceiling.FORMAT, "layer": "2", "negative": {"ceiling": 4.0},
                                "positive": {"ceiling": 0.5}}))
    cfg = dict(model_args=f"pretrained={tiny_dir},vector={vec}", layers="2", tasks="dsteer_hh_mini")
    plan = plan_sweep(SweepConfig(alphas="rel:-1,0,1", ceiling=str(file), output=str(tmp_path / "o"), **cfg))
    assert plan.alphas == (-4.0, 0.0, 0.5) and [p.name for p in plan.points] == ["unsteered", "L2_a-4", "L2_a0.5"]
    with pytest.raises(ValueError, match="needs --ceiling FILE"):
        plan_sweep(SweepConfig(alphas="rel:-1,0,1", output=str(tmp_path / "p"), **cfg))
    with pytest.raises(ValueError, match="measured at layer 2, the sweep steers layer 3"):
        plan_sweep(SweepConfig(alphas="rel:-1,1", ceiling=str(file), output=str(tmp_path / "q"),
                               **(cfg | {"layers": "3"})))
    with pytest.raises(ValueError, match="--ceiling goes with"):
        plan_sweep(SweepConfig(alphas="-1,0", ceiling=str(file), output=str(tmp_path / "r"), **cfg))


def test_unit_norm_scales_v_to_the_mean_state_norm(tiny_dir, tiny, tmp_path):
    from test_tasks import write_vector

    from dsteer_eval.adapters.steered import SteeredLM
    from dsteer_eval.dpo.extract import last_token_states, unique_prompts
    from dsteer_eval.adapters.plugin import tasks_dir
    from dsteer_eval.data.preference_pairs import load_pairs

    vec = write_vector(tmp_path / "v.safetensors", tiny[0])
    lm = SteeredLM(pretrained=tiny_dir, vector=vec, layer=2, alpha=0.1, unit="norm", device="cpu")
    prompts = unique_prompts(load_pairs(f"{tasks_dir()}/hh/hh_mini.jsonl"))
    expected = float(last_token_states(tiny[0], tiny[1], prompts)[:, 2].norm(dim=-1).mean())
    (item,) = lm.interventions
    assert float(item.vector.norm()) == pytest.approx(expected, rel=1e-5) and item.alpha == 0.1


@pytest.mark.embedded
def test_ceiling_on_the_embedded_pair(tmp_path):
    from dsteer_eval.cli import main

    out = tmp_path / "ceiling.json"
    assert main(["ceiling", "--prompts", "4", "--steps", "3", "--start", "1", "--max-new-tokens", "12",
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["layer"] == "20" and data["prompts"] == 4 and data["unsteered"]["degenerate"] <= 0.25
    for side in ("negative", "positive"):
        grid = data[side]["grid"]
        passed = [g for g in grid if g["passed"]]
        assert data[side]["ceiling"] == (abs(passed[-1]["alpha"]) if passed else 0.0)
        assert all(g["passed"] for g in grid[:-1])  # the grid stops at the first failure
