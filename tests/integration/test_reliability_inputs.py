"""Issue 12: inputs that used to lose work, give silent wrong numbers, false refusals or tracebacks.

3  --out as a symbolic link; a failed final move keeps the finished output; --out checked up front
4  non-finite vectors / coefficients / shifts, fp16 overflow of alpha*v, NaN forward passes, and
   metrics that count (never score) documents with NaN/inf log-likelihoods
5  one layer named twice (layer=2;-3, final;-1)
6  valid safetensors files whose header length starts with the byte 0x80
9c truncated / corrupt vector files, corrupt gzip and lone surrogates in preference data
9d extract caps texts at the model's context, keeping their end
9e an unwritable output is a one-line CLI error
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

from dsteer_eval.vectors import VectorFileError, load_vectors, save_vectors

NAN = float("nan")
GOOD = {"chosen": "\n\nHuman: hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: hi\n\nAssistant: Go away."}


def make(tiny_dir, **kw):
    kw.setdefault("batch_size", 2)
    kw.setdefault("device", "cpu")
    return get_model("steered")(pretrained=tiny_dir, **kw)


@pytest.fixture(scope="module")
def vec_file(tiny, tmp_path_factory):
    g = torch.Generator().manual_seed(5)
    path = tmp_path_factory.mktemp("vec") / "v.safetensors"
    save_vectors(path, {s: torch.randn(32, generator=g) for s in range(5)}, model=tiny[0], model_id="tiny")
    return str(path)


def builtin(path, **entry):
    info = {"steering_vector": torch.ones(32), "steering_coefficient": 1.0, "action": "add", "bias": None,
            "head_index": None}
    info.update(entry)
    torch.save({"layers.1": info}, path)
    return str(path)


# ------------------------------------------------------------------ 3: output folders
def test_staged_folder_follows_a_symlinked_target_and_keeps_the_link(tmp_path):
    from dsteer_eval.common.output_folder import staged_folder

    real = tmp_path / "real"
    real.mkdir()
    (real / "old.txt").write_text("old")
    link = tmp_path / "link"
    link.symlink_to(real)
    with staged_folder(link) as tmp:
        (tmp / "new.txt").write_text("new")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert (link / "new.txt").read_text() == "new" and not (real / "old.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # nothing staged or aside is left


def test_probe_with_a_symlinked_out_keeps_its_report(tiny_dir, tiny_adapter_dir, short_pairs_file, tmp_path):
    from dsteer_eval.cli import main

    real = tmp_path / "reports"
    real.mkdir()
    link = tmp_path / "latest"
    link.symlink_to(real)
    assert main(["probe", "--pretrained", tiny_dir, "--peft", tiny_adapter_dir, "--data", short_pairs_file,
                 "--alphas", "0,1", "--grad-pairs", "2", "--no-figures", "--out", str(link)]) == 0
    assert link.is_symlink()
    assert json.loads((real / "probe_report.json").read_text())["format"] == "dsteer-eval/probe-report"


def test_a_failed_final_move_keeps_the_finished_output(tmp_path, monkeypatch):
    from dsteer_eval.common.output_folder import OutputFolderError, staged_folder

    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    real_replace = os.replace

    def failing_replace(src, dst):
        if ".tmp" in Path(src).name:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OutputFolderError, match=r"kept in .*\.out\.tmp\d+") as err:
        with staged_folder(target) as tmp:
            (tmp / "result.json").write_text("{}")
    monkeypatch.undo()
    kept = Path(str(err.value).split("kept in ")[1].split(";")[0])
    assert (kept / "result.json").read_text() == "{}"
    assert (target / "old.txt").read_text() == "old"  # the previous output is back in place


def test_out_is_checked_for_writing_before_any_work(tmp_path, monkeypatch):
    from dsteer_eval.common.output_folder import OutputFolderError, check_free

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(OutputFolderError, match=r"cannot write .*file\.txt/out: .*file\.txt is a file, not a "
                                                r"folder \(--out .*\)"):
        check_free(a_file / "out")

    import tempfile

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(OutputFolderError, match=r"cannot write .*ro/out: .* is not writable \(Permission denied\) "
                                                r"\(--out .*ro/out\)"):
        check_free(tmp_path / "ro" / "out")


def test_cli_unwritable_out_is_one_line_and_exit_2(tiny_dir, tiny_adapter_dir, short_pairs_file, tmp_path, capsys,
                                                   monkeypatch):
    from dsteer_eval import vectors
    from dsteer_eval.cli import main

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    out = a_file / "adapter"
    assert main(["train-dpo", "--data", short_pairs_file, "--pretrained", tiny_dir, "--steps", "1",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsteer-eval train-dpo: error: cannot write ") and f"(--out {out})" in err
    assert "\n" not in err and "Traceback" not in err

    # An OSError while writing (here: the vector file) is one line too, naming the output.
    target = tmp_path / "v.safetensors"

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / f".{target.name}.tmp1"))

    monkeypatch.setattr(vectors, "save_vectors", denied)
    assert main(["extract", "--pretrained", tiny_dir, "--peft", tiny_adapter_dir, "--data", short_pairs_file,
                 "--batch-size", "4", "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress bars come first
    assert err[-1] == (f"dsteer-eval extract: error: cannot write {tmp_path}/.v.safetensors.tmp1: Permission denied "
                       f"(--out {target})")
    assert not any("Traceback" in line for line in err)


# ------------------------------------------------------------------ 4: non-finite inputs
def test_hh_task_with_a_nan_steer_path_file_is_refused_at_load(tiny_dir, tmp_path):
    import lm_eval
    from dsteer_eval.sweep.plan import task_manager_for  # one index per process (seconds each)

    path = builtin(tmp_path / "nan.pt", steering_vector=torch.full((32,), NAN))
    with pytest.raises(ValueError, match=r"steer_path=.*nan\.pt hookpoint 'layers\.1' steering_vector contains "
                                         r"NaN or inf \(32 NaN"):
        lm_eval.simple_evaluate(model="steered", model_args=f"pretrained={tiny_dir},steer_path={path},device=cpu",
                                tasks=["dsteer_hh_mini"], limit=4, batch_size=2, task_manager=task_manager_for())


@pytest.mark.parametrize("entry, message", [
    (dict(steering_coefficient=NAN), r"steering_coefficient=nan must be a finite number"),
    (dict(steering_coefficient=float("inf")), r"steering_coefficient=inf must be a finite number"),
    (dict(steering_vector=torch.tensor([1.0] * 31 + [float("-inf")])), r"steering_vector contains NaN or inf"),
    (dict(action="clamp", bias=torch.full((32,), NAN)), r"hookpoint 'layers\.1' bias contains NaN or inf"),
    (dict(action="clamp", steering_vector=torch.zeros(32)), r"'clamp' steering_vector of norm 0 has no direction"),
])
def test_builtin_pt_non_finite_entries_are_refused(tiny_dir, tmp_path, entry, message):
    path = builtin(tmp_path / "steer.pt", **entry)
    with pytest.raises(ValueError, match=r"steer_path=.*steer\.pt.*" + message):
        make(tiny_dir, steer_path=path)


def test_fp16_overflow_of_alpha_times_v_is_refused(tiny_dir, tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    from dsteer_eval.steering.hook import Intervention, NonFiniteError, steer

    big = tmp_path / "big.safetensors"
    save_vectors(big, {2: torch.full((32,), 1000.0)}, model=tiny[0])
    with pytest.raises(NonFiniteError, match=r"alpha=100 times vector=.*big\.safetensors \(layer 2\).*reaches "
                                             r"1e\+05, beyond the largest float16 value 65504"):
        make(tiny_dir, vector=str(big), layer=2, alpha=100, dtype="float16")
    path = builtin(tmp_path / "big.pt", steering_coefficient=1e5)
    with pytest.raises(NonFiniteError, match=r"alpha=1 times steering_coefficient=100000 times steering_vector.*"
                                             r"float16"):
        make(tiny_dir, steer_path=path, dtype="float16")
    # A Python Intervention goes through the same check when steer() builds the shift.
    half = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float16)
    with pytest.raises(NonFiniteError, match=r"alpha=100 times the steering vector at layer 2.*float16"):
        with steer(half, [Intervention(2, torch.full((32,), 1000.0), 100.0)]):
            pass
    with steer(half, [Intervention(2, torch.full((32,), 1000.0), 60.0)]):  # 60000 fits in float16
        pass


def test_a_forward_pass_with_nan_logits_raises_instead_of_scoring(tiny_dir, tiny, tmp_path):
    from dsteer_eval.adapters.steered import NonFiniteStateError

    huge = tmp_path / "huge.safetensors"
    save_vectors(huge, {1: torch.full((32,), 3e38), 2: torch.full((32,), 3e38)}, model=tiny[0])  # each fits float32
    lm = make(tiny_dir, vector=str(huge), layer="1;2", alpha=1.0)  # together they overflow the residual stream
    reqs = [Instance("loglikelihood", {}, ("Human: hi Assistant:", " Hello"), 0),
            Instance("loglikelihood", {}, ("Human: hi Assistant:", " Go away"), 1)]
    with pytest.raises(NonFiniteStateError, match=r"steered model \(pretrained=.*vector=.*huge\.safetensors, "
                                                  r"layer=1;2, alpha=1\.0.*NaN/inf logits"):
        lm.loglikelihood(reqs)
    gen = [Instance("generate_until", {}, ("Human: hi", {"until": ["\n\n"], "max_gen_toks": 4}), 0)]
    with pytest.raises(NonFiniteStateError):
        lm.generate_until(gen)


def test_metrics_count_and_never_score_non_finite_loglikelihoods():
    from dsteer_eval.metrics import fidelity, hh_preference, truthfulqa

    doc = hh_preference.prepare_pair(GOOD)
    for bad in (NAN, float("inf"), float("-inf")):
        assert hh_preference.process_results(doc, [(bad, False), (-1.0, False)]) == {"skipped_pairs": 0,
                                                                                    "n_nonfinite": 1}
    assert hh_preference.process_results(doc, [(-1.0, False), (-2.0, False)])["n_nonfinite"] == 0

    mc = {"mc2_targets": {"choices": ["a", "b", "c"], "labels": [1, 0, 0]}}
    assert truthfulqa.process_results_mc1(mc, [(NAN, False), (-1.0, False), (-2.0, False)]) == {"n_nonfinite": 1}
    assert truthfulqa.process_results_mc1(mc, [(-3.0, False), (-1.0, False), (-2.0, False)]) == {
        "acc": 0.0, "n_nonfinite": 0}
    assert truthfulqa.process_results_mc2(mc, [(-1.0, False), (NAN, False), (-2.0, False)]) == {"n_nonfinite": 1}
    # finite but so unlikely that exp() underflows: the built-in gives 0/0; here the same mass, stably
    out = truthfulqa.process_results_mc2(mc, [(-1000.0, False), (-1001.0, False), (-1001.0, False)])
    e = torch.tensor([0.0, -1.0, -1.0]).exp()
    assert out == {"acc": pytest.approx(float(e[0] / e.sum())), "n_nonfinite": 0}

    item = {"text": "Mix flour and water.", "nll_sum": NAN, "n_tokens": 5, "reference_model": "ref"}
    out = fidelity.process_results({"chosen_reply": "Mix flour, water and yeast."}, [item])
    assert out["n_nonfinite"] == 1 and "gen_nll" not in out and "perplexity" not in out
    assert out["bleu"] > 0 and out["rougeL"] > 0  # the text itself is still scored
    assert fidelity.corpus_perplexity([(NAN, 5), (2.0, 2)]) == pytest.approx(float(torch.tensor(1.0).exp()))


def test_task_yamls_route_non_finite_documents_to_n_nonfinite():
    from dsteer_eval.sweep.plan import task_manager_for  # one index per process (seconds each)

    tasks = task_manager_for().load(["dsteer_hh_mini", "truthfulqa_mc1_mini", "truthfulqa_mc2_mini",
                                "dsteer_fidelity_mini"])["tasks"]
    for name, task in tasks.items():
        agg = task.aggregation()["n_nonfinite"]
        assert (agg.__module__, agg.__name__) == ("dsteer_eval.metrics.aggregations", "total"), name
    for name in ("truthfulqa_mc1_mini", "truthfulqa_mc2_mini"):
        task = tasks[name]
        doc = next(iter(task.validation_docs()))
        n = len(task.doc_to_choice(doc))
        assert task.process_results(doc, [(NAN, False)] + [(-1.0, False)] * (n - 1)) == {"n_nonfinite": 1}, name
    hh = tasks["dsteer_hh_mini"]
    doc = next(d for d in hh.test_docs() if d["same_prefix"])
    assert hh.process_results(doc, [(NAN, False), (-5.0, False)]) == {"skipped_pairs": 0, "n_nonfinite": 1}


# ------------------------------------------------------------------ 5: one layer named twice
def test_one_layer_named_twice_is_refused(tiny_dir, vec_file):
    from dsteer_eval.steering.args import resolve_sites

    assert resolve_sites((1, -2, "final"), 4) == (1, 3, 4)
    with pytest.raises(ValueError, match=r"layer=final;-1: 'final' and -1 are the same site \(4 of"):
        resolve_sites(("final", -1), 4)
    with pytest.raises(ValueError, match=r"layer=2;-3: 2 and -3 are the same site \(2 of a model with 4 decoder "
                                         r"layers\), so the vector would be added twice"):
        make(tiny_dir, vector=vec_file, layer="2;-3")
    with pytest.raises(ValueError, match=r"'final' and -1 are the same site"):
        make(tiny_dir, vector=vec_file, layer="final;-1", alpha="1;2")


# ------------------------------------------------------------------ 6: 0x80 is not a pickle
def _hand_written(path, pad: int) -> int:
    """A valid safetensors file with an unpadded header of a chosen length; returns that length."""
    header = {"__metadata__": {"pad": "x" * pad},
              "layer.2": {"dtype": "F32", "shape": [32], "data_offsets": [0, 128]}}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + torch.arange(32, dtype=torch.float32).numpy().tobytes())
    return len(raw)


def test_header_lengths_with_any_low_byte_load_and_real_pickles_are_refused(tiny, tmp_path):
    for pad in range(300):  # save_vectors' own output, header length padded to 0x..80
        path = save_vectors(tmp_path / "ours.safetensors", {2: torch.ones(32)}, model=tiny[0],
                            extra={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no metadata length gave a header length with low byte 0x80")
    assert torch.equal(load_vectors(path).vectors[2], torch.ones(32))
    lows = set()
    for pad in range(256):
        lows.add(_hand_written(tmp_path / "h.safetensors", pad) % 256)
        assert load_vectors(tmp_path / "h.safetensors").vectors[2][5] == 5.0
    assert lows == set(range(256))

    refused = {"zip": tmp_path / "zip.safetensors"}
    torch.save({"layer.2": torch.ones(32)}, refused["zip"])
    for protocol in (2, 4, 5):
        refused[f"pickle{protocol}"] = tmp_path / f"p{protocol}.safetensors"
        refused[f"pickle{protocol}"].write_bytes(pickle.dumps({"layer.2": [1.0] * 32}, protocol=protocol))
    refused["legacy torch.save"] = tmp_path / "legacy.safetensors"
    torch.save({"layer.2": torch.ones(32)}, refused["legacy torch.save"], _use_new_zipfile_serialization=False)
    for kind, path in refused.items():
        with pytest.raises(VectorFileError, match=r"vector=.* is a pickle / torch\.save file"):
            load_vectors(path)


# ------------------------------------------------------------------ 9c: broken files
def test_truncated_and_corrupt_vector_files_name_the_file(tiny, tmp_path):
    from safetensors.torch import save_file

    good = save_vectors(tmp_path / "good.safetensors", {s: torch.ones(32) for s in range(5)}, model=tiny[0])
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(VectorFileError, match=r"vector=.*cut\.safetensors is truncated: tensor 'layer\.4'"):
        load_vectors(cut)
    bad_meta = tmp_path / "meta.safetensors"
    save_file({"layer.2": torch.ones(32)}, str(bad_meta), metadata={"num_layers": "four"})
    with pytest.raises(VectorFileError, match=r"vector=.*meta\.safetensors: bad metadata: num_layers='four' is not "
                                              r"an integer"):
        load_vectors(bad_meta)
    bad_json = tmp_path / "json.safetensors"
    bad_json.write_bytes(struct.pack("<Q", 12) + b'{"layer.2": ' + bytes(128))
    with pytest.raises(VectorFileError, match=r"vector=.*json\.safetensors is not a safetensors file \(its header "
                                              r"is not valid JSON"):
        load_vectors(bad_json)


def test_corrupt_gzip_and_lone_surrogates_name_the_file_and_line(tmp_path):
    from dsteer_eval.data.preference_pairs import DataFileError, load_pairs

    rows = [dict(GOOD, n=i) for i in range(3000)]
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode(), mtime=0)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match=r"cut\.jsonl\.gz: the gzip data is cut off .*the last good line is "
                                            r"[1-9]\d*"):
        load_pairs(cut)
    crc = tmp_path / "crc.jsonl.gz"
    crc.write_bytes(data[:-8] + bytes(b ^ 0xFF for b in data[-8:-4]) + data[-4:])
    with pytest.raises(DataFileError, match=r"crc\.jsonl\.gz: the gzip data is corrupt .*the last good line is 3000"):
        load_pairs(crc)
    surrogate = tmp_path / "s.jsonl"
    surrogate.write_text(json.dumps(GOOD) + "\n"
                         + '{"chosen": "\\n\\nHuman: hi \\ud800\\n\\nAssistant: a", "rejected": "x"}\n')
    with pytest.raises(DataFileError, match=r"s\.jsonl:2: field 'chosen' holds a lone surrogate \\ud800 at "
                                            r"character 12"):
        load_pairs(surrogate)
    nested = write_jsonl(tmp_path / "n.jsonl", [GOOD])
    with open(nested, "a") as fh:
        fh.write('{"prompt": "Q", "chosen": " a", "rejected": " b", "meta": {"tags": ["ok", "\\udfff"]}}\n')
    with pytest.raises(DataFileError, match=r"n\.jsonl:2: field 'meta\.tags\[1\]' holds a lone surrogate"):
        load_pairs(nested)


# ------------------------------------------------------------------ 9d: context cap
LONG = "The quick brown fox jumps over the lazy dog. " * 100  # 3300 tokens of the tiny tokenizer


def test_last_token_states_keep_the_end_of_texts_longer_than_the_context(tiny):
    from dsteer_eval.dpo.extract import context_limit, last_token_states

    model, tok = tiny
    assert context_limit(model, tok) == 512  # config 512; the tokenizer's 1e30 "no limit" is ignored
    stats = {}
    states = last_token_states(model, tok, [LONG, "What is the capital of France?"], batch_size=2, stats=stats)
    assert stats["truncated"] == 1
    ids = tok(LONG).input_ids
    assert len(ids) > 512
    with torch.no_grad():
        want = model(torch.tensor([ids[-512:]]), output_hidden_states=True).hidden_states
    for site in range(5):
        torch.testing.assert_close(states[0, site], want[site][0, -1].float(), atol=1e-4, rtol=1e-4)


def test_cli_extract_reports_truncated_texts(tiny_dir, tiny_adapter_dir, tmp_path, capsys):
    from dsteer_eval.cli import main

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": LONG}, {"prompt": "Human: hi\n\nAssistant:"}])
    out = tmp_path / "v.safetensors"
    assert main(["extract", "--pretrained", tiny_dir, "--peft", tiny_adapter_dir, "--data", prompts,
                 "--batch-size", "2", "--out", str(out)]) == 0
    meta = load_vectors(out).metadata
    assert meta["truncated_texts"] == "1" and meta["context_tokens"] == "512"
    assert "1 text(s) longer than the model's context were cut to their last 512 tokens" in capsys.readouterr().out
