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


def test_a_layer_set_steers_every_layer_with_one_alpha_like_steered(tiny_dir, vec, tiny_adapter_dir):
    """``--layers 1+2`` (the authors' protocol: several layers, one scalar) is one grid point whose numbers are
    exactly a fresh ``steered`` model's with ``layer=1;2`` (v̄ of each layer at its own site), controls too;
    it runs point by point (never in a one-site group) and shares the layers below its lowest site."""
    from dsteer_eval.adapters.steered import SteeredLM
    from dsteer_eval.sweep.grid import LayerSet, Point, parse_layer_grid, points
    from dsteer_eval.sweep.sweep_lm import SweepLM

    grid = parse_layer_grid("2,1+2")
    assert grid == (2, LayerSet((1, 2))) and str(grid[1]) == "1+2"
    assert [p.name for p in points(grid, (0.0, -1.0))] == ["unsteered", "L2_a-1", "L1+2_a-1"]
    assert Point(grid[1], -1.0, "dpo", 3).model_args("pretrained=x") == "pretrained=x,layer=1;2,alpha=-1,control=random:3"
    kwargs = {"pretrained": tiny_dir, "vector": vec, "batch_size": 4, "peft": tiny_adapter_dir}
    requests = _requests()
    lm = SweepLM(**kwargs, layer=2, alpha=0.0)
    seen = {}
    for layer, alpha, control in ((grid[1], 0.0, None), (grid[1], -1.5, None), (grid[1], -1.5, 0), (2, -1.5, None)):
        lm.set_point(layer, alpha, "dpo", control)
        lm.set_group([("a", layer, alpha, control), ("b", layer, alpha - 1.0, control)], "a")
        got = lm.loglikelihood(requests, disable_tqdm=True)
        extra = {} if control is None else {"control": f"random:{control}"}
        want = SteeredLM(**kwargs, **extra, layer=";".join(str(x) for x in (layer if isinstance(layer, tuple) else
                                                                             (layer,))), alpha=alpha)
        want = want.loglikelihood(requests, disable_tqdm=True)
        assert max(abs(g[0] - w[0]) for g, w in zip(got, want)) <= 1e-4, (layer, alpha, control)
        seen[(str(layer), alpha, control)] = [g[0] for g in got]
    assert len(lm.interventions) == 1 and lm.interventions[0].site == 2
    assert seen[("1+2", -1.5, None)] != seen[("2", -1.5, None)]  # layer 1 is steered too
    assert seen[("1+2", -1.5, 0)] != seen[("1+2", -1.5, None)]


@pytest.fixture(scope="module")
def controlled(tiny_dir, vec, tiny_adapter_dir, tmp_path_factory):
    from dsteer_eval.sweep.runner import run_sweep

    out = tmp_path_factory.mktemp("controlled") / "out"
    failures = run_sweep(config(tiny_dir, vec, out, model_args=f"pretrained={tiny_dir},vector={vec},peft={tiny_adapter_dir}",
                                alphas="-1,0,1", controls="random:1", limit=None), print_fn=lambda *_: None)
    assert failures == 0
    return out


def test_sweep_writes_per_doc_values_for_every_unit(controlled):
    out = controlled
    names = sorted(p.name for p in (out / "points").iterdir())
    assert names == sorted(["unsteered", "L2_a-1", "L2_a-1_random0", "L2_a1", "L2_a1_random0", "base", "base_L2_a1",
                            "base_L2_a1_random0"])
    for name in names:
        unit = out / "points" / name / "dsteer_hh_mini"
        per_doc = json.loads((unit / "per_doc.json").read_text())["tasks"]["dsteer_hh_mini"]
        results = json.loads(next(unit.glob("results_*.json")).read_text())
        assert per_doc["doc_id"] == list(range(24))  # the 24 hh_mini pairs
        acc = per_doc["metrics"]["acc"]
        assert sum(acc) / len(acc) == pytest.approx(results["results"]["dsteer_hh_mini"]["acc,none"], abs=1e-12)
        assert all(len(r) == 2 and all(isinstance(x, float) for x in r) for r in per_doc["resps"])
        model_args = results["config"]["model_args"]
        assert ("peft=none" in model_args) == name.startswith("base")
        assert ("control=random:0" in model_args) == name.endswith("random0")
    record = json.loads((out / "sweep.json").read_text())
    assert [p["name"] for p in record["points"]][:3] == ["unsteered", "L2_a-1", "L2_a-1_random0"]


def test_leaderboard_pairs_every_effect_with_its_reference_and_controls(controlled):
    from dsteer_eval.leaderboard import build_leaderboard, write_leaderboard
    from dsteer_eval.stats.bootstrap import paired_bootstrap

    out = controlled
    board = build_leaderboard([out])
    key = "dsteer_hh_mini/acc"

    def acc(point):
        d = json.loads((out / "points" / point / "dsteer_hh_mini" / "per_doc.json").read_text())["tasks"]
        return d["dsteer_hh_mini"]["metrics"]["logprob_margin"], d["dsteer_hh_mini"]["metrics"]["acc"]

    from dsteer_eval.leaderboard.paired import role

    by_role = {(role(i.key).side, i.key.alpha): i for i in board.paired[key]}
    item = by_role[("dpo", -1.0)]
    assert item.label == "DPO (peft=tiny_adapter0) · layer 2, α=-1"
    _, x = acc("L2_a-1")
    _, ref = acc("unsteered")
    _, ctl = acc("L2_a-1_random0")
    assert item.vs_ref == paired_bootstrap(x, ref)  # exactly the documented procedure on these documents
    assert item.vs_control == paired_bootstrap(x, ctl)  # K=1: the control's own values
    assert item.controls["k"] == 1 and item.controls["mean"] == pytest.approx(sum(ctl) / len(ctl))
    base = by_role[("base", 0.0)]
    assert base.label == "base (peft=none) · unsteered (α=0)"
    _, b = acc("base")
    assert base.vs_ref == paired_bootstrap(b, ref)  # the base row against DPO at α=0
    assert base.n_conditioned is not None
    assert {i.label for i in board.paired[key]} == {r.label for r in board.rows if "random" not in r.label} - \
        {"DPO (peft=tiny_adapter0) · unsteered (α=0)"}
    # the claims are computed: (a) once, (b)/(d) for DPO α=-1, (c)/(d) for base α=+1, per paired metric
    claims = [v for v in board.claims if "dsteer_hh_mini/acc" in v.claim]
    gap = paired_bootstrap(b, ref)
    if gap.mean != 0:
        assert [c.claim[:3] for c in claims] == ["(a)", "(b)", "(d)", "(c)", "(d)"]
    assert all(c.verdict in ("supported", "contradicted", "not shown", "partly") for c in claims)
    written = write_leaderboard(board, out, plots=False)
    md = written["markdown"].read_text()
    assert "Paired: dsteer_hh_mini/acc" in md and "Δ vs control" in md
    data = json.loads(written["json"].read_text())
    assert data["paired"][key] and data["claims"] == [v.as_dict() for v in board.claims]
    header = written["csv"].read_text().splitlines()[0]
    assert f"{key} vs_ref mean" in header and f"{key} vs_control low" in header


def _unit(folder, model_args, values, resps=None):
    folder.mkdir(parents=True)
    n = len(values)
    (folder / "results_2026-01-01T00-00-00.json").write_text(json.dumps({
        "results": {"t": {"alias": "t", "m,none": sum(values) / n, "m_stderr,none": 0.0}},
        "configs": {"t": {"metric_list": [{"metric": "m", "aggregation": "mean", "higher_is_better": True}]}},
        "config": {"model": "steered", "model_args": model_args}, "higher_is_better": {"t": {"m": True}},
        "date": 1.0}))
    (folder / "per_doc.json").write_text(json.dumps({"format": "dsteer-eval/per-doc", "tasks": {"t": {
        "doc_id": list(range(n)), "metrics": {"m": values},
        "resps": resps or [[float(v), 0.0] for v in values]}}}))


@pytest.mark.parametrize("restore, verdicts", [
    # -v takes back 80 % of the gap, +v installs 90 %, random directions do nothing; one random direction per
    # point: (d) is underpowered (K = 1 < 19)
    (0.8, ["supported", "supported", "supported", "underpowered", "supported", "supported", "underpowered"]),
    # -v takes back only 30 %: it moves (b), but less than half (b½ contradicted)
    (0.3, ["supported", "supported", "contradicted", "underpowered", "supported", "supported", "underpowered"]),
    # -v moves the metric away from the base: (b) wrong way, (d) not decided (doing less damage than a random
    # direction says nothing)
    (-0.5, ["supported", "wrong way", "contradicted", "not decided", "supported", "supported", "underpowered"]),
])
def test_claims_are_computed_from_the_numbers(tmp_path, restore, verdicts):
    from dsteer_eval.leaderboard import build_leaderboard

    n = 40
    noise = [((i * 7919) % 13 - 6) / 100 for i in range(n)]
    dpo = [1.0 + e for e in noise]
    base = [0.0 + e for e in noise]  # gap base - dpo = -1 on every document
    _unit(tmp_path / "a", "pretrained=m,peft=/a,alpha=0", dpo)
    _unit(tmp_path / "b", "pretrained=m,peft=/a,layer=2,alpha=-1", [d - restore + e / 5 for d, e in zip(dpo, noise)])
    _unit(tmp_path / "c", "pretrained=m,peft=/a,layer=2,alpha=-1,control=random:0", [d + e / 5 for d, e in zip(dpo, noise)])
    _unit(tmp_path / "d", "pretrained=m,peft=none,alpha=0", base)
    _unit(tmp_path / "e", "pretrained=m,peft=none,layer=2,alpha=1", [b + 0.9 + e / 5 for b, e in zip(base, noise)])
    _unit(tmp_path / "f", "pretrained=m,peft=none,layer=2,alpha=1,control=random:0", [b - e / 5 for b, e in zip(base, noise)])
    board = build_leaderboard([tmp_path])
    assert [c.claim[:4] for c in board.claims] == ["(a) ", "(b) ", "(b)½", "(d) ", "(c) ", "(c)½", "(d) "]
    got = [c.verdict.split(" (")[0] for c in board.claims]
    assert got == verdicts
    assert all("K = 1 < 19" in c.verdict for c in board.claims if c.verdict.startswith("underpowered"))
    b = board.claims[1]  # the fraction of the gap closed, per document paired: restore + noise/5 exactly
    fraction = restore - sum(noise) / n / 5
    assert b.note.startswith(f"fraction {fraction:.2f} [")
    assert b.delta["mean"] == pytest.approx(-restore + sum(noise) / n / 5)


@pytest.mark.parametrize("strong_random, verdict, rank", [
    (False, "supported", "rank 1 of 21 by distance to the target, p = 0.048"),
    (True, "not shown", "rank 2 of 21 by distance to the target, p = 0.095")])
def test_claim_d_with_twenty_random_directions_needs_the_nearest(tmp_path, strong_random, verdict, rank):
    """K = 20: (d) is supported only when v is nearer the base than every random direction (p = 1/21); one
    random direction that lands nearer makes it not shown. With eight it could never be (p >= 1/9)."""
    from dsteer_eval.leaderboard import build_leaderboard

    n = 40
    noise = [((i * 7919) % 13 - 6) / 100 for i in range(n)]
    dpo = [1.0 + e for e in noise]
    _unit(tmp_path / "a", "pretrained=m,peft=/a,alpha=0", dpo)
    _unit(tmp_path / "b", "pretrained=m,peft=/a,layer=2,alpha=-1", [d - 0.8 + e / 5 for d, e in zip(dpo, noise)])
    for i in range(20):  # random directions move 0 .. 0.19 toward the base; with strong_random one moves 0.9
        shift = 0.9 if strong_random and i == 3 else 0.01 * i
        _unit(tmp_path / f"c{i}", f"pretrained=m,peft=/a,layer=2,alpha=-1,control=random:{i}",
              [d - shift + e / 7 for d, e in zip(dpo, noise)])
    _unit(tmp_path / "d", "pretrained=m,peft=none,alpha=0", [0.0 + e for e in noise])
    board = build_leaderboard([tmp_path])
    (d,) = [c for c in board.claims if c.claim.startswith("(d)")]
    assert d.verdict == verdict and d.note.startswith(rank)


def test_plots_draw_controls_as_a_band_not_as_lines(controlled):
    from dsteer_eval.leaderboard import build_leaderboard
    from dsteer_eval.leaderboard.plots import _bands, _column_value, _lines, figures

    board = build_leaderboard([controlled])
    j = next(j for j, c in enumerate(board.columns) if c.key == "dsteer_hh_mini/acc")
    lines = _lines(board, _column_value(board, j))
    assert not any("random" in label for label, _ in lines)
    bands = _bands(board, _column_value(board, j))
    assert sorted(label for label, _ in bands) == [
        "DPO (peft=tiny_adapter0) · layer 2: random controls (K=1)", "base (peft=none) · layer 2: random controls (K=1)"]
    dpo = dict(bands)["DPO (peft=tiny_adapter0) · layer 2: random controls (K=1)"]
    assert [p[0] for p in dpo] == [-1.0, 1.0]
    assert figures(board)["overview.png"].startswith(b"\x89PNG")


def test_metadata_paired_adds_metrics_beyond_the_headline(tmp_path):
    from dsteer_eval.leaderboard import build_leaderboard

    def unit(folder, model_args, a, b):
        folder.mkdir(parents=True)
        (folder / "results_2026-01-01T00-00-00.json").write_text(json.dumps({
            "results": {"t": {"alias": "t", "m,none": sum(a) / len(a), "k,none": sum(b) / len(b)}},
            "configs": {"t": {"metric_list": [{"metric": "m", "aggregation": "mean"}, {"metric": "k", "aggregation": "mean"}],
                              "metadata": {"headline": "m", "paired": ["k"]}}},
            "config": {"model_args": model_args}, "date": 1.0}))
        (folder / "per_doc.json").write_text(json.dumps({"tasks": {"t": {
            "doc_id": [0, 1, 2], "metrics": {"m": a, "k": b}, "resps": [[0.0]] * 3}}}))

    unit(tmp_path / "a", "pretrained=m,alpha=0", [1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    unit(tmp_path / "b", "pretrained=m,layer=2,alpha=-1", [1.0, 2.0, 4.0], [1.0, 1.0, 1.0])
    board = build_leaderboard([tmp_path])
    assert list(board.paired) == ["t/m", "t/k"] and [c.key for c in board.columns] == ["t/m"]
    assert board.paired["t/k"][0].vs_ref.mean == 1.0 and board.paired["t/m"][0].vs_ref.mean == pytest.approx(1 / 3)


def test_without_a_base_dpo_gap_the_direction_claims_are_not_shown(tmp_path):
    from dsteer_eval.leaderboard import build_leaderboard

    n = 40
    dpo = [1.0 + ((i * 7919) % 13 - 6) / 100 for i in range(n)]
    base = [d + (0.5 if i % 2 else -0.49) for i, d in enumerate(dpo)]  # no significant gap
    _unit(tmp_path / "a", "pretrained=m,peft=/a,alpha=0", dpo)
    _unit(tmp_path / "b", "pretrained=m,peft=/a,layer=2,alpha=-1", [d - 2.0 for d in dpo])
    _unit(tmp_path / "d", "pretrained=m,peft=none,alpha=0", base)
    _unit(tmp_path / "e", "pretrained=m,peft=none,layer=2,alpha=1", [b + 2.0 for b in base])
    claims = build_leaderboard([tmp_path]).claims
    assert [(c.claim[:3], c.verdict) for c in claims] == [("(a)", "not shown"), ("(b)", "not shown"),
                                                         ("(c)", "not shown")]
    assert all("no significant base–DPO gap" in c.note for c in claims[1:])


def test_report_on_the_tiny_sweep_matches_its_per_doc_values(controlled, tiny_dir, vec, tiny_adapter_dir, tmp_path,
                                                             capsys):
    """`sweep --report` (resuming the finished sweep: no unit reruns) writes OUT/report; its fraction of the gap
    is mean(m − s)/mean(t − s) of the units' own per-document values, and one random direction is underpowered."""
    from dsteer_eval.cli import main

    def values(point):
        found = json.loads((controlled / "points" / point / "dsteer_hh_mini" / "per_doc.json").read_text())
        return found["tasks"]["dsteer_hh_mini"]["metrics"]["logprob_margin"]

    assert main(["sweep", "--model-args", f"pretrained={tiny_dir},vector={vec},peft={tiny_adapter_dir}",
                 "--alphas", "-1,0,1", "--layers", "2", "--controls", "random:1", "--tasks", "dsteer_hh_mini",
                 "--batch-size", "4", "--output", str(controlled), "--report", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((controlled / "report" / "report.json").read_text())
    m, s, t = values("L2_a-1"), values("unsteered"), values("base")
    expected = sum(a - b for a, b in zip(m, s)) / sum(c - b for c, b in zip(t, s))
    (row,) = [r for e in report["card"]["entries"] if e["side"] == "dpo" and e["metric"] == "logprob_margin"
              for r in e["rows"] if r["alpha"] == -1.0]
    assert row["closure"]["fraction"] == pytest.approx(expected, rel=1e-9) and row["documents"] == 24
    assert row["verdicts"]["vs_random"] == "underpowered (K = 1 < 19)" and row["rank"]["k"] == 1
    seed = json.loads((controlled / "sweep.json").read_text())["settings"]["control_seed"]
    assert [(c["k"], c["seed"], c["per_sweep"]) for c in report["controls"]] == [(1, seed, True)]
    assert f"Random directions: K = 1, seed {seed}. Within a sweep" in (controlled / "report" / "report.md").read_text()
    assert "| dsteer_hh_mini / logprob_margin | dpo | L2_a-1 |" in printed
    assert not list(controlled.parent.glob(".out.lock"))  # the CLI's lock over sweep, leaderboard and report is gone
