"""Labels that make the same file-safe name still get one figure each, and each heading shows its own."""

from __future__ import annotations

import json

from test_report import make_sweep

from dsteer_eval.cli import main


def _figures(md: str) -> dict[str, str]:
    """``{alt text: file}`` of every figure line of a report.md (the alt text may hold brackets)."""
    out = {}
    for line in md.splitlines():
        if line.startswith("!["):
            cut = line.rindex("](")
            out[line[2:cut]] = line[cut + 2:-1]
    return out


def _report(tmp_path, name, sweeps, labels=None):
    args = ["report", *map(str, sweeps), "--out", str(tmp_path / name)]
    assert main(args + (["--labels", labels] if labels else [])) == 0
    folder = tmp_path / name
    return folder, _figures((folder / "report.md").read_text())


def test_labels_that_differ_only_in_punctuation_get_their_own_figures(tmp_path, capsys):
    own, other = make_sweep(tmp_path / "own", planted=True), make_sweep(tmp_path / "other", planted=False)
    folder, figures = _report(tmp_path, "both", [own, other], "v̄ (own),v̄ [own]")
    first, second = figures["v̄ (own): toy_task / margin"], figures["v̄ [own]: toy_task / margin"]
    assert first != second and (folder / first).is_file() and (folder / second).is_file()
    alone, single = _report(tmp_path, "alone", [own], "v̄ (own)")  # the planted sweep's figure, drawn by itself
    assert (folder / first).read_bytes() == (alone / single["v̄ (own): toy_task / margin"]).read_bytes()
    assert (folder / second).read_bytes() != (folder / first).read_bytes()
    entries = {f["title"]: f["file"] for f in json.loads((folder / "report.json").read_text())["figures"]}
    assert entries["v̄ (own): toy_task / margin"] == first and entries["v̄ [own]: toy_task / margin"] == second


def test_default_labels_runs_slash_a_and_runs_underscore_a_do_not_share_a_file(tmp_path, capsys):
    slash, underscore = make_sweep(tmp_path / "runs" / "a", planted=True), make_sweep(tmp_path / "runs_a", planted=False)
    folder, figures = _report(tmp_path, "rep", [slash, underscore])
    first, second = figures[f"{slash}: toy_task / margin"], figures[f"{underscore}: toy_task / margin"]
    assert first != second and (folder / first).read_bytes() != (folder / second).read_bytes()
    assert sorted(p.name for p in folder.glob("dose_response_*.png")) == sorted([first, second])


def test_a_label_already_file_safe_keeps_its_plain_name(tmp_path, capsys):
    folder, figures = _report(tmp_path, "rep", [make_sweep(tmp_path / "s", planted=True)])
    assert figures == {"toy_task / margin": "dose_response_toy_task_margin.png"}


def test_one_label_for_two_sweeps_is_refused(tmp_path, capsys):
    own, other = make_sweep(tmp_path / "own", planted=True), make_sweep(tmp_path / "other", planted=False)
    assert main(["report", str(own), str(other), "--labels", "v̄,v̄", "--out", str(tmp_path / "rep")]) == 2
    assert "--labels: 'v̄' names more than one sweep; give each sweep its own label" in capsys.readouterr().err
