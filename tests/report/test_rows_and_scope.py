"""Each number says the documents it uses; each sweep shows its own position; the ceiling holds only for the
layer and the side it was measured on."""

from __future__ import annotations

import json

from test_missing_points import _nan
from test_report import K, N_DOCS, make_sweep
from test_where import make_layer_sweep

from dsteer_eval.cli import main
from dsteer_eval.report.build import build_report


def _rows(report, side):
    (entry,) = [e for e in report["card"]["entries"] if e["side"] == side]
    return entry, {r["alpha"]: r for r in entry["rows"]}


def test_a_random_direction_with_missing_documents_does_not_shrink_the_v_bar_row(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "s", planted=True)
    _nan(sweep, "L2_a-1_random0", docs=range(30))  # one random direction lost 30 documents
    _nan(sweep, "L2_a-0.5", docs=range(10))  # v̄ itself lost 10 at α = −0.5
    entry, rows = _rows(build_report(sweep), "dpo")
    assert entry["gap"]["n"] == N_DOCS
    assert rows[-1.0]["documents"] == N_DOCS and rows[-1.0]["closure"]["n"] == N_DOCS
    assert rows[-1.0]["random_documents"] == N_DOCS - 30 and len(rows[-1.0]["random"]) == K
    assert rows[-1.0]["rank"]["rank"] == 1 and rows[-1.0]["per_document"]["wrong_way"] == 0.0
    assert sum(rows[-1.0]["per_document"]["histogram"]["counts"]) == N_DOCS
    assert rows[-0.5]["documents"] == N_DOCS - 10 and rows[-0.5]["random_documents"] == N_DOCS - 10
    assert rows[-2.0]["documents"] == rows[-2.0]["random_documents"] == N_DOCS
    assert main(["report", str(sweep), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert f"| toy_task / margin | dpo | L2_a-1 (random directions compared on {N_DOCS - 30} documents) | 50.0 % [" \
        in out
    assert f"| toy_task / margin | dpo | L2_a-0.5 ({N_DOCS - 10} documents) | 25.0 % [" in out
    assert "| toy_task / margin | dpo | L2_a-2 (beyond ceiling) | 100.0 % [" in out
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"over {N_DOCS} documents (a card row that uses fewer names its own)" in md


def test_each_sweep_shows_its_own_position(tmp_path):
    first = make_layer_sweep(tmp_path / "all")
    last = make_layer_sweep(tmp_path / "last")
    record = json.loads((last / "sweep.json").read_text())
    record["settings"]["model_args"] = "pretrained=tiny,position=last"
    (last / "sweep.json").write_text(json.dumps(record))
    report = build_report([first, last], labels=["position all", "position last"])
    assert report["position"] == ["all", "last"]
    assert build_report(first)["position"] == "all"
    assert main(["report", str(first), str(last), "--labels", "position all,position last", "--out",
                 str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "position: position all: `all`; position last: `last`;" in md


def _ceiling(sweep, **ceiling):
    (sweep / "ceiling.json").write_text(json.dumps(ceiling))


def test_the_ceiling_holds_for_its_layer_and_the_side_it_was_measured_on(tmp_path):
    sweep = make_sweep(tmp_path / "s", planted=True)
    _ceiling(sweep, layer="2", peft="/models/adapter", negative={"ceiling": 1.5}, positive={"ceiling": 0.5})
    report = build_report(sweep)
    entry, rows = _rows(report, "dpo")
    assert [rows[a]["beyond_ceiling"] for a in (-0.5, -1.0, -2.0)] == [False, False, True]
    assert entry["best"]["alpha"] == -1.0
    _, base = _rows(report, "base")
    assert base[1.0]["beyond_ceiling"] is None  # measured on the DPO model: the base model has no ceiling here
    assert report["curves"][0]["ceiling_scope"] == {"side": "dpo", "layer": "2"}
    _ceiling(sweep, layer="3", peft="/models/adapter", negative={"ceiling": 0.25}, positive={"ceiling": 0.25})
    entry, rows = _rows(build_report(sweep), "dpo")
    assert [rows[a]["beyond_ceiling"] for a in (-0.5, -1.0, -2.0)] == [None, None, None]
    # no ceiling at layer 2 now; α = −2 reaches the target exactly but every output is degenerate: not eligible
    assert rows[-2.0]["degeneration_rate"] == 1.0 and entry["best"]["alpha"] == -1.0


def test_a_ceiling_measured_without_the_adapter_holds_for_the_base_side(tmp_path):
    sweep = make_sweep(tmp_path / "s", planted=True)
    _ceiling(sweep, layer="2", peft=None, negative={"ceiling": 0.25}, positive={"ceiling": 0.5})
    report = build_report(sweep)
    _, rows = _rows(report, "dpo")
    _, base = _rows(report, "base")
    assert [rows[a]["beyond_ceiling"] for a in (-0.5, -1.0, -2.0)] == [None, None, None]
    assert base[1.0]["beyond_ceiling"] is True


def test_a_ceiling_without_a_layer_holds_only_in_a_one_layer_sweep(tmp_path):
    sweep = make_layer_sweep(tmp_path / "s")  # layers 1, 2 and 3+4
    _ceiling(sweep, negative={"ceiling": 0.5}, positive={"ceiling": 0.5})
    rows = [r for e in build_report(sweep)["card"]["entries"] for r in e["rows"]]
    assert rows and all(r["beyond_ceiling"] is None for r in rows)
