"""The probe registry: a probe keeps its declaration, claims read declared numbers, and a new probe is one
module plus a line (the worked example of docs/probes.md, run end to end on the tiny pair)."""

from __future__ import annotations

import json

import pytest
import torch

from dsteer_eval.data.preference_pairs import PreferencePair
from dsteer_eval.dpo.model_pair import ModelPair
from dsteer_eval.probes import measures
from dsteer_eval.probes.registry import Claim, Probe, ProbeContext, ProbeSettings, check_registry, run_probe
from dsteer_eval.probes.report import HEADLINE_KEYS, run_probes, write_report
from dsteer_eval.probes.suite import CLAIMS, PROBES, consistency, projection
from dsteer_eval.steering.controls import random_direction
from conftest import SHORT_PAIRS

PAIRS = [PreferencePair(**row) for row in SHORT_PAIRS]


def _ctx():
    settings = ProbeSettings((0.0, 1.0), 0.1, 4, 4, 64, False, 0, 0, 0)
    return ProbeContext(None, [], [], None, {}, 1, 2, torch.ones(3), torch.ones(3), settings)


def test_a_probe_that_writes_undeclared_numbers_or_sections_is_refused():
    sneaky = Probe("sneaky", lambda ctx: ctx.numbers.update(secret=[1.0]) or {"s": 1}, sections=("s",))
    with pytest.raises(ValueError, match="probe 'sneaky' wrote numbers it does not declare: \\['secret'\\]"):
        run_probe(sneaky, _ctx())
    wrong = Probe("wrong", lambda ctx: {"other": 1}, sections=("s",))
    with pytest.raises(ValueError, match="probe 'wrong' wrote sections \\['other'\\], declared \\['s'\\]"):
        run_probe(wrong, _ctx())
    with pytest.raises(ValueError, match="'used_pairs' is made by the 'gradients' probe, which must run first"):
        _ctx().need("used_pairs", "gradients")


def test_registry_checks_names_sections_and_the_numbers_claims_read():
    claim = Claim("x_vs_y", "x beats y", "mean", ("x",), ("nowhere",), "x vs y", "layer", "last_prompt", "prompts")
    with pytest.raises(ValueError, match="claim 'x_vs_y' reads numbers no probe declares: \\['nowhere'\\]"):
        check_registry([Probe("p", lambda ctx: {}, sections=("a",), numbers=("x",), claims=(claim,))])
    with pytest.raises(ValueError, match="sections used twice: \\['a'\\]"):
        check_registry([Probe("p", lambda ctx: {}, sections=("a",)), Probe("q", lambda ctx: {}, sections=("a",))])
    check_registry(PROBES)  # the shipped registry is consistent
    assert len(CLAIMS) == 14 and len({c.key for c in CLAIMS}) == 14
    assert [p.name for p in PROBES] == ["projection", "logit_margin", "consistency", "gradients", "spectra",
                                        "identity", "controls", "null_adapter", "pca_cloud", "lattice_field"]


# ---- the worked example of docs/probes.md: "projection on a random direction, at every layer"
def _random_projection_run(ctx: ProbeContext) -> dict:
    r = random_direction(ctx.v.float(), site=ctx.layer, index=0, seed=ctx.settings.null_seed)
    proj = ctx.delta.double() @ (r.double() / r.double().norm())
    ctx.numbers["proj_random_example"] = proj
    return {"random_projection": {"layer": ctx.layer, "position": "last_prompt", "shift": measures.summary(proj)}}


def _random_projection_figure(report, canvas):
    fig, ax = canvas.plt.subplots()
    ax.bar([0], [report["random_projection"]["shift"]["mean"]])
    canvas.save(fig, "random_projection.png")


EXAMPLE = Probe(
    "random_projection", _random_projection_run, sections=("random_projection",), numbers=("proj_random_example",),
    claims=(Claim("projection_vs_one_random", "movement along v̂ exceeds movement along one random direction",
                  "mean", ("proj_v",), ("proj_random_example",), "⟨δᵢ, v̂⟩ vs ⟨δᵢ, r̂⟩", "layer", "last_prompt",
                  "prompts"),),
    headline=lambda report: {"random_projection_mean": report["random_projection"]["shift"]["mean"]},
    figures=_random_projection_figure,
)


def test_a_new_probe_is_one_module_plus_a_line(tiny_dir, tiny_adapter_dir, tmp_path):
    """The registry's loop gives a new probe its section, headline key, verdict and figure, and the built-in
    probes it runs beside give exactly the numbers they give alone."""
    pair = ModelPair.load(tiny_dir, adapter=tiny_adapter_dir, device="cpu")
    kwargs = dict(layer=2, batch_size=4, max_length=64, nulls=False, random_controls=0, lattice_pairs=0,
                  n_resamples=1000)
    probes = (projection.PROBE, consistency.PROBE, EXAMPLE)
    report = run_probes(pair, PAIRS, probes=probes, **kwargs)
    assert [k for k in report if k in ("projection", "read_positions", "consistency", "random_projection")] == [
        "projection", "read_positions", "consistency", "random_projection"]
    assert "gradient_coherence" not in report and "steering_identity" not in report
    assert list(report["headline"]) == ["projection_shift_mean", "projection_frac_rose", "consistency_cos_mean",
                                        "consistency_frac_above_0_5", "random_projection_mean",
                                        "verdicts_supported", "verdicts_total"]
    (row,) = report["verdicts"]
    assert row["key"] == "projection_vs_one_random" and row["n"] == report["data"]["prompts"]
    alone = run_probes(pair, PAIRS, probes=(projection.PROBE, consistency.PROBE), **kwargs)
    assert alone["projection"] == report["projection"] and alone["consistency"] == report["consistency"]
    path = write_report(report, tmp_path / "out", probes=probes)
    written = json.loads(path.read_text())
    assert "random_projection.png" in written["figures"] and (path.parent / "random_projection.png").is_file()
    assert {"projection_by_layer.png", "consistency_hist.png"} <= set(written["figures"])
    assert "| movement along v̂ exceeds movement along one random direction |" in \
        (path.parent / "verdicts.md").read_text()


def test_the_full_registry_headline_is_the_documented_key_list():
    """HEADLINE_KEYS (what leaderboards read) is the registry's headline keys in order, then the counts."""
    keys = []
    fake = _fake_full_report()
    for probe in PROBES:
        keys += list(probe.headline(fake))
    assert tuple(keys + ["verdicts_supported", "verdicts_total"]) == HEADLINE_KEYS


def _fake_full_report() -> dict:
    summary = {"mean": 0.0}
    return {"layer": 0, "projection": {"by_layer": [{"layer": 0, "shift": summary, "frac_rose": 0.5}]},
            "logit_margin": {"shift": summary, "frac_rose": 0.5}, "consistency": {"cos": summary, "frac_above_0_5": 0},
            "gradient_coherence": {"at_dpo": {"cos": summary}}, "spectra": [{}],
            "steering_identity": {"kl_base_dpo": 0, "best_restoration": {"ratio": 0}, "best_reproduction": {"ratio": 0},
                                  "alpha_1": {"restoration_ratio": 0, "reproduction_ratio": 0}},
            "controls": {}, "nulls": None}
