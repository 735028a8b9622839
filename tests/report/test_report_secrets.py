"""The report never copies a secret from a sweep's sweep.json (model_args written before redaction, or by hand)
into report.json, report.md, report.html or what it prints."""

from __future__ import annotations

import json

from test_report import make_sweep

from dsteer_eval.cli import main

SECRET = "hf_abcdefghijkl"


def test_a_token_in_the_sweeps_model_args_is_masked_in_every_file(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "s", planted=True)
    record = json.loads((sweep / "sweep.json").read_text())
    record["settings"]["model_args"] = f"pretrained=tiny,hf_token={SECRET},position=all"
    (sweep / "sweep.json").write_text(json.dumps(record))
    assert main(["report", str(sweep), "--out", str(tmp_path / "rep")]) == 0
    assert SECRET not in capsys.readouterr().out
    for name in ("report.json", "report.md", "report.html"):
        text = (tmp_path / "rep" / name).read_text()
        assert SECRET not in text, name
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["model_args"] == \
        "pretrained=tiny,hf_token=<redacted>,position=all"
    assert "`pretrained=tiny,hf_token=<redacted>,position=all`" in (tmp_path / "rep" / "report.md").read_text()
