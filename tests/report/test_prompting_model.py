"""`report --prompting` compares the two sweeps' recorded models (pretrained and adapter contents, dtype) and
refuses a prompting sweep of another model, naming what differs."""

from __future__ import annotations

import json

import pytest
from test_report import make_sweep, write_prompting_sweep

from dsteer_eval.cli import main
from dsteer_eval.report.build import build_report

PRETRAINED = {"sha256": "a" * 64, "path": "/models/base"}
ADAPTER = {"sha256": "b" * 64, "path": "/models/adapter"}


def _settings(model_args="pretrained=/models/base", pretrained=PRETRAINED, adapter=ADAPTER, adapter_full="c" * 64):
    settings = {"model_args": model_args, "fingerprint_version": "2",
                "contents": {"pretrained=": pretrained, **({"peft=": adapter} if adapter else {})}}
    models = [{"role": "base", "path_or_id": pretrained["path"], "fingerprint": {"content_digest": pretrained["sha256"]}}]
    if adapter:
        models.append({"role": "adapter", "path_or_id": adapter["path"], "fingerprint": {"adapter_sha256": adapter_full}})
    return settings, {"models": models}


def _record(folder, settings, provenance):
    record = json.loads((folder / "sweep.json").read_text())
    record.update(settings=settings, provenance=provenance)
    (folder / "sweep.json").write_text(json.dumps(record))


def make_prompting_sweep(folder, **model):
    write_prompting_sweep(folder)
    _record(folder, *_settings(**model))
    return folder


@pytest.fixture
def main_sweep(tmp_path):
    sweep = make_sweep(tmp_path / "s", planted=True)
    _record(sweep, *_settings(model_args="pretrained=/models/base,layer=2"))
    return sweep


def test_the_same_model_is_accepted(tmp_path, main_sweep):
    prompted = make_prompting_sweep(tmp_path / "p", model_args="pretrained=/models/base,dtype=auto")
    report = build_report(main_sweep, prompting=prompted)
    assert {e["side"]: e["prompting"]["closure"]["fraction"] for e in report["card"]["entries"]} == \
        pytest.approx({"base": 0.25, "dpo": 0.0})


def test_another_adapter_is_refused_naming_prompting_and_the_adapter(tmp_path, main_sweep, capsys):
    prompted = make_prompting_sweep(tmp_path / "p", adapter={"sha256": "d" * 64, "path": "/models/adapter"})
    with pytest.raises(ValueError) as error:
        build_report(main_sweep, prompting=prompted)
    assert str(error.value) == (
        f"--prompting {prompted}: not the same model as {main_sweep} (adapter contents: sha256 dddddddddddddddd "
        f"there, bbbbbbbbbbbbbbbb here); the prompting baseline divides by this pair's gap, so run it on the same "
        f"model: the same --model-args (pretrained, peft, dtype)")
    assert main(["report", str(main_sweep), "--prompting", str(prompted), "--out", str(tmp_path / "rep")]) == 2
    assert f"--prompting {prompted}: not the same model" in capsys.readouterr().err


def test_the_same_adapter_path_with_other_weights_is_refused(tmp_path, main_sweep):
    prompted = make_prompting_sweep(tmp_path / "p", adapter_full="e" * 64)
    with pytest.raises(ValueError, match=r"adapter weights: sha256 eeeeeeeeeeeeeeee there, cccccccccccccccc here"):
        build_report(main_sweep, prompting=prompted)


def test_another_dtype_or_no_adapter_is_refused(tmp_path, main_sweep):
    prompted = make_prompting_sweep(tmp_path / "p", model_args="pretrained=/models/base,dtype=float32")
    with pytest.raises(ValueError, match=r"^--prompting .*\(dtype: float32 there, auto here\)"):
        build_report(main_sweep, prompting=prompted)
    bare = make_prompting_sweep(tmp_path / "q", adapter=None)
    with pytest.raises(ValueError, match=r"\(adapter: none there, /models/adapter here\)"):
        build_report(main_sweep, prompting=bare)
