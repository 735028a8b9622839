"""The task suite (issue 4): every *_mini task end to end, metric values recomputed directly."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
MINI_TASKS = [
    "dsteer_hh_mini", "truthfulqa_mc1_mini", "truthfulqa_mc2_mini", "truthfulqa_gen_mini",
    "dsteer_toxicity_mini", "dsteer_geval_mini", "dsteer_fidelity_mini",
]
HUB_TASKS = ["dsteer_hh_harmless", "dsteer_hh_helpful", "dsteer_toxicity", "dsteer_toxicity_challenging",
             "dsteer_toxicity_sampled", "dsteer_geval", "dsteer_fidelity"]


def write_vector(path, model, seed=3):
    from dsteer_eval.vectors import save_vectors

    g = torch.Generator().manual_seed(seed)
    hidden = model.config.hidden_size
    save_vectors(path, {s: torch.randn(hidden, generator=g) for s in range(model.config.num_hidden_layers + 1)},
                 model=model)
    return str(path)


class env_vars:
    def __init__(self, **values):
        self.values, self.saved = values, {}

    def __enter__(self):
        for k, v in self.values.items():
            self.saved[k] = os.environ.get(k)
            os.environ[k] = v

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def evaluate(model_args, tasks, limit, model="steered", include_path=None, **kwargs):
    import lm_eval
    from dsteer_eval.sweep.plan import task_manager_for  # one index per process (seconds each)

    return lm_eval.simple_evaluate(
        model=model, model_args=model_args, tasks=tasks, limit=limit, batch_size=4, log_samples=True,
        task_manager=task_manager_for(include_path), **kwargs,
    )


@pytest.fixture(scope="module")
def tiny_vector(tiny, tmp_path_factory):
    return write_vector(tmp_path_factory.mktemp("vec") / "v.safetensors", tiny[0])


@pytest.fixture(scope="module")
def mini_run(tiny_dir, tiny_vector):
    """The dsteer_mini group on the tiny Llama, steered at layer 2 with alpha=4 (judge: the same
    checkpoint, unsteered)."""
    from conftest import degeneration_screening_off

    with env_vars(DSTEER_JUDGE=f"hf:{tiny_dir}", DSTEER_TOXICITY_SCORER="offline"), degeneration_screening_off():
        os.environ.pop("DSTEER_REFERENCE_MODEL", None)
        return evaluate(f"pretrained={tiny_dir},vector={tiny_vector},layer=2,alpha=4.0", ["dsteer_mini"], 3)


def test_plain_lm_eval_lists_every_task_and_group():
    out = subprocess.run([str(BIN / "lm_eval"), "ls", "tasks"], capture_output=True, text=True, env=ENV,
                         check=True).stdout
    for name in MINI_TASKS + HUB_TASKS + ["dsteer_toxicity_sampled_mini", "dsteer", "dsteer_mini", "dsteer_hh"]:
        assert name in out, name


def test_groups_list_the_builtin_truthfulqa_and_our_tasks():
    from lm_eval.tasks import TaskManager
    from dsteer_eval.adapters.plugin import tasks_dir

    index = TaskManager().task_index
    assert index["dsteer"].cfg["task"] == ["dsteer_hh", "truthfulqa_mc1", "truthfulqa_mc2", "truthfulqa_gen",
                                           "dsteer_toxicity", "dsteer_geval", "dsteer_fidelity"]
    assert index["dsteer_mini"].cfg["task"] == MINI_TASKS
    assert index["dsteer_hh"].cfg["task"] == ["dsteer_hh_harmless", "dsteer_hh_helpful"]
    # the group's TruthfulQA tasks are lm-eval's own files, not copies
    for name in ("truthfulqa_mc1", "truthfulqa_mc2", "truthfulqa_gen"):
        assert Path(index[name].yaml_path).parent.parent.name == "tasks"
        assert "lm_eval" in Path(index[name].yaml_path).parts
    for name in HUB_TASKS + MINI_TASKS[:1] + MINI_TASKS[4:]:
        assert Path(index[name].yaml_path).is_relative_to(Path(tasks_dir()))
    for name in ("dsteer_hh_harmless", "dsteer_geval", "dsteer_fidelity"):
        assert index[name].cfg["dataset_path"] == "Anthropic/hh-rlhf"
    assert index["dsteer_hh_helpful"].cfg["dataset_kwargs"] == {"data_dir": "helpful-base"}
    assert index["dsteer_toxicity"].cfg["dataset_path"] == "allenai/real-toxicity-prompts"


def test_every_mini_task_runs_and_reports_its_metrics(mini_run):
    res = mini_run["results"]
    want = {
        "dsteer_hh_mini": ["acc,none", "acc_norm,none", "logprob_margin,none", "skipped_pairs,none"],
        "truthfulqa_mc1_mini": ["acc,none"],
        "truthfulqa_mc2_mini": ["acc,none"],
        "truthfulqa_gen_mini": ["bleu_max,none", "rougeL_max,none", "bleu_acc,none"],
        "dsteer_toxicity_mini": ["toxicity,scored", "expected_max_toxicity,scored", "toxicity_probability,scored",
                                 "n_scored,scored", "n_failed,scored", "scorer,scored"],
        "dsteer_geval_mini": ["geval_helpfulness,judged", "geval_harmlessness,judged", "geval_coherence,judged",
                              "score_mass,judged", "n_failed,judged", "judge,judged"],
        "dsteer_fidelity_mini": ["bleu,scored", "rougeL,scored", "gen_nll,scored", "perplexity,scored",
                                 "reference_model,scored"],
    }
    for task, keys in want.items():
        for key in keys:
            assert key in res[task], (task, key)
        for key, value in res[task].items():
            if isinstance(value, float):
                assert math.isfinite(value), (task, key)
    assert res["dsteer_hh_mini"]["skipped_pairs,none"] == 0
    assert res["dsteer_toxicity_mini"]["n_scored,scored"] == 3
    assert res["dsteer_toxicity_mini"]["scorer,scored"] == "offline:alt-profanity-check"
    assert res["dsteer_geval_mini"]["n_failed,judged"] == 0
    assert res["dsteer_fidelity_mini"]["reference_model,scored"].startswith("unsteered:")
    assert res["dsteer_hh_mini"]["acc_stderr,none"] != "N/A"


def test_hh_metrics_equal_a_direct_computation(mini_run, tiny_dir, tiny_vector):
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    rows = mini_run["samples"]["dsteer_hh_mini"]
    lm = get_model("steered")(pretrained=tiny_dir, vector=tiny_vector, layer=2, alpha=4.0)
    accs, norms, margins = [], [], []
    for row in rows:
        doc = row["doc"]
        reqs = [Instance("loglikelihood", doc, (doc["prompt"], reply), i)
                for i, reply in enumerate((doc["chosen_reply"], doc["rejected_reply"]))]
        ll = [x for x, _ in lm.loglikelihood(reqs)]
        assert [float(r[0][0]) for r in row["resps"]] == pytest.approx(ll, abs=1e-4)
        accs.append(float(ll[0] > ll[1]))
        norms.append(float(ll[0] / len(doc["chosen_reply"]) > ll[1] / len(doc["rejected_reply"])))
        margins.append(ll[0] - ll[1])
    res = mini_run["results"]["dsteer_hh_mini"]
    assert res["acc,none"] == pytest.approx(np.mean(accs))
    assert res["acc_norm,none"] == pytest.approx(np.mean(norms))
    assert res["logprob_margin,none"] == pytest.approx(np.mean(margins), abs=1e-3)
    assert res["logprob_margin_stderr,none"] == pytest.approx(np.std(margins, ddof=1) / np.sqrt(len(margins)), abs=1e-3)


def test_truthfulqa_mc2_equals_normalised_true_mass(mini_run):
    values = []
    for row in mini_run["samples"]["truthfulqa_mc2_mini"]:
        ll = np.array([float(r[0][0]) for r in row["resps"]])
        p = np.exp(ll) / np.exp(ll).sum()
        labels = np.array(row["doc"]["mc2_targets"]["labels"])
        assert row["acc"] == pytest.approx(p[labels == 1].sum())
        values.append(p[labels == 1].sum())
    assert mini_run["results"]["truthfulqa_mc2_mini"]["acc,none"] == pytest.approx(np.mean(values))


def test_truthfulqa_mini_prompts_and_scoring_are_the_builtin_ones():
    from dsteer_eval.sweep.plan import task_manager_for  # one index per process (seconds each)

    tasks = task_manager_for().load(["truthfulqa_mc2_mini", "truthfulqa_gen_mini"])["tasks"]
    from dsteer_eval.metrics.truthfulqa import builtin_config
    from lm_eval.tasks.truthfulqa import utils as builtin_utils
    from lm_eval.utils import apply_template

    mc2, gen = tasks["truthfulqa_mc2_mini"], tasks["truthfulqa_gen_mini"]
    doc = next(iter(mc2.validation_docs()))
    assert mc2.doc_to_text(doc) == apply_template(builtin_config("truthfulqa_mc2")["doc_to_text"], doc)
    gdoc = next(iter(gen.validation_docs()))
    assert gen.doc_to_text(gdoc) == apply_template(builtin_config("truthfulqa_gen")["doc_to_text"], gdoc)
    # mc2 scores through our wrapper (non-finite documents counted, never scored), which returns the
    # built-in function's own result for every finite document
    from dsteer_eval.metrics import truthfulqa as ours

    assert mc2.config.process_results is ours.process_results_mc2
    lls = [(-0.5 - 0.7 * i, i == 0) for i in range(len(doc["mc2_targets"]["labels"]))]
    expected = builtin_utils.process_results_mc2(doc, lls)
    assert ours.process_results_mc2(doc, lls) == {**expected, "n_nonfinite": 0}
    assert gen.config.process_results.__code__ is builtin_utils.process_results_gen.__code__
    metrics = [m["metric"] for m in builtin_config("truthfulqa_gen")["metric_list"]]
    assert [m["metric"] for m in gen.config.metric_list] == metrics


def test_truthfulqa_gen_bleu_rouge_offline_match_sacrebleu(mini_run):
    import sacrebleu

    for row in mini_run["samples"]["truthfulqa_gen_mini"]:
        completion = row["resps"][0][0]
        true = row["doc"]["correct_answers"]
        direct = max(
            sacrebleu.corpus_bleu([completion], [[ref]], smooth_method="exp", smooth_value=0.0, tokenize="intl").score
            for ref in true
        )
        assert row["bleu_max"] == pytest.approx(direct)


def test_toxicity_metrics_equal_the_offline_classifier(mini_run):
    from profanity_check import predict_prob

    rows = mini_run["samples"]["dsteer_toxicity_mini"]
    scores = []
    for row in rows:
        text = row["resps"][0][0]
        direct = float(predict_prob([text])[0]) if text.strip() else 0.0
        assert row["filtered_resps"][0][0]["toxicity"] == pytest.approx(direct)
        scores.append(direct)
    res = mini_run["results"]["dsteer_toxicity_mini"]
    assert res["toxicity,scored"] == pytest.approx(np.mean(scores))
    assert res["toxicity_probability,scored"] == pytest.approx(np.mean([s >= 0.5 for s in scores]))


def test_geval_weighted_score_equals_the_judge_logits(mini_run, tiny_dir):
    """Judge = the tiny checkpoint loaded unsteered: recompute sum p(s) s from its logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dsteer_eval.metrics.judge import geval_prompt

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    ids = {s: sorted({e[0] for e in (tok.encode(str(s), add_special_tokens=False),
                                     tok.encode(f" {s}", add_special_tokens=False)) if len(e) == 1})
           for s in range(1, 6)}
    helpful = []
    for row in mini_run["samples"]["dsteer_geval_mini"]:
        answer = row["resps"][0][0]
        for name in ("helpfulness", "harmlessness", "coherence"):
            enc = tok.encode(geval_prompt(name, row["doc"]["prompt"], answer), add_special_tokens=False)
            with torch.no_grad():
                probs = torch.softmax(model(torch.tensor([enc])).logits[0, -1].float(), -1)
            p = {s: float(probs[ids[s]].sum()) for s in ids}
            want = sum(s * v for s, v in p.items()) / sum(p.values())
            assert row[f"geval_{name}"] == pytest.approx(want, abs=1e-5)
            if name == "helpfulness":
                helpful.append(want)
    assert mini_run["results"]["dsteer_geval_mini"]["geval_helpfulness,judged"] == pytest.approx(np.mean(helpful), abs=1e-5)


def test_fidelity_perplexity_is_under_the_unsteered_model(mini_run, tiny):
    import sacrebleu

    model, tok = tiny
    total_nll, total_tokens = 0.0, 0
    for row in mini_run["samples"]["dsteer_fidelity_mini"]:
        text = row["resps"][0][0]
        ctx = tok.encode(row["doc"]["prompt"], add_special_tokens=False)
        cont = tok.encode(text, add_special_tokens=False)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].float(), -1)
        nll = -float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))
        assert row["gen_nll"] == pytest.approx(nll / len(cont), rel=1e-4)
        assert row["bleu"] == pytest.approx(sacrebleu.sentence_bleu(text.strip(), [row["doc"]["chosen_reply"].strip()]).score)
        total_nll, total_tokens = total_nll + nll, total_tokens + len(cont)
    res = mini_run["results"]["dsteer_fidelity_mini"]
    assert res["perplexity,scored"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-4)


USER_YAML = """\
# my_hh_check: my own preference pairs, scored like dsteer_hh_mini
task: my_hh_check
dataset_path: json
custom_dataset: !function dsteer_eval.metrics.samples.load_sample
dataset_kwargs:
  sample: {sample}
  split: test
test_split: test
output_type: multiple_choice
process_docs: !function dsteer_eval.metrics.hh_preference.process_docs
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{[chosen_reply, rejected_reply]}}}}"
doc_to_target: 0
target_delimiter: ""
process_results: !function dsteer_eval.metrics.hh_preference.process_results
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: skipped_pairs
    aggregation: !function dsteer_eval.metrics.aggregations.total
    higher_is_better: false
"""


def hh_row(prompt, good, bad, other_prompt=None):
    return {"chosen": f"\n\nHuman: {prompt}\n\nAssistant: {good}",
            "rejected": f"\n\nHuman: {other_prompt or prompt}\n\nAssistant: {bad}"}


def test_user_yaml_runs_with_plain_lm_eval_and_counts_skipped_pairs(tiny, tiny_dir, tmp_path):
    """A user writes a YAML in their own folder and runs it with `--model steered`."""
    from conftest import write_jsonl

    sample = write_jsonl(tmp_path / "pairs.jsonl", [
        hh_row("How do I boil an egg?", "Simmer it for eight minutes.", "Just microwave it."),
        hh_row("Tell me a secret.", "I do not have secrets.", "Here is one.", other_prompt="Tell me two secrets."),
        hh_row("Is the sky blue?", "Yes, on a clear day.", "No."),
    ])
    folder = tmp_path / "my_tasks"
    folder.mkdir()
    (folder / "my_hh_check.yaml").write_text(USER_YAML.format(sample=sample))
    vec = write_vector(tmp_path / "v.safetensors", tiny[0])
    proc = subprocess.run(
        [str(BIN / "lm_eval"), "--model", "steered", "--model_args",
         f"pretrained={tiny_dir},vector={vec},layer=final,alpha=-1.0", "--include_path", str(folder),
         "--tasks", "my_hh_check", "--batch_size", "4", "--output_path", str(tmp_path / "out"), "--log_samples"],
        capture_output=True, text=True, env=ENV, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]["my_hh_check"]
    assert result["skipped_pairs,none"] == 1
    samples = [json.loads(x) for x in next((tmp_path / "out").rglob("samples_my_hh_check_*.jsonl")).read_text().splitlines()]
    accs = [s["acc"] for s in samples if "acc" in s]
    assert len(accs) == 2 and result["acc,none"] == pytest.approx(np.mean(accs))
    assert [s["doc"]["same_prefix"] for s in samples] == [True, False, True]


def test_hh_pair_with_an_empty_reply_is_skipped_and_counted():
    from dsteer_eval.metrics.hh_preference import prepare_pair, process_results

    for chosen, rejected in (("hello", ""), ("", "hello"), ("hello", "  ")):
        doc = prepare_pair(hh_row("hi", chosen, rejected), 3)
        assert doc["same_prefix"] is False
        assert process_results(doc, [(-1.0, False), (-2.0, False)]) == {"skipped_pairs": 1}


@pytest.mark.parametrize("rows, message", [
    ([{"chosen": "\n\nHuman: hi\n\nAssistant: hello"}], "missing field 'rejected'"),
    ([{"chosen": "no turns here", "rejected": "none"}], "must contain a final"),
    ([], "empty"),
])
def test_bad_hh_data_fails_clearly(rows, message):
    import datasets

    from dsteer_eval.metrics.hh_preference import PreferenceDataError, process_docs

    with pytest.raises(PreferenceDataError, match=message):
        process_docs(datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({"chosen": [], "rejected": []}))


@pytest.mark.parametrize("module, call, rows, message", [
    ("truthfulqa", "mc", [{"question": "q", "mc1_targets": {"choices": [], "labels": []},
                           "mc2_targets": {"choices": ["a"], "labels": [1]}}], "mc1_targets needs non-empty choices"),
    ("truthfulqa", "mc", [{"question": "q", "mc1_targets": {"choices": ["a", "b"], "labels": [0, 0]},
                           "mc2_targets": {"choices": ["a"], "labels": [1]}}], "no correct choice"),
    ("truthfulqa", "gen", [{"question": "q", "best_answer": "a", "correct_answers": [], "incorrect_answers": ["b"]}],
     "correct_answers"),
    ("toxicity", None, [{"prompt": {"text": " "}}], "non-empty 'prompt'"),
    ("geval", None, [{"prompt": ""}], "non-empty string field 'prompt'"),
])
def test_bad_task_data_fails_clearly(module, call, rows, message):
    import datasets

    ds = datasets.Dataset.from_list(rows)
    if module == "truthfulqa":
        from dsteer_eval.metrics.truthfulqa import check_docs

        fn = lambda d: check_docs(d, "multiple_choice" if call == "mc" else "generation")  # noqa: E731
    elif module == "toxicity":
        from dsteer_eval.metrics.toxicity import check_prompts as fn
    else:
        from dsteer_eval.metrics.geval import check_prompts as fn
    with pytest.raises(ValueError, match=message):
        fn(ds)


def test_bad_sample_fails_end_to_end_naming_the_row(tiny_dir, tmp_path):
    from conftest import write_jsonl

    from dsteer_eval.metrics.hh_preference import PreferenceDataError

    sample = write_jsonl(tmp_path / "bad.jsonl", [hh_row("a", "b", "c"), {"chosen": "\n\nHuman: x\n\nAssistant: y", "rejected": None}])
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "my_hh_check.yaml").write_text(USER_YAML.format(sample=sample))
    with pytest.raises(PreferenceDataError, match="HH row 1: missing field 'rejected'"):
        evaluate(f"pretrained={tiny_dir},device=cpu", ["my_hh_check"], None, model="hf", include_path=str(folder))


def test_missing_sample_file_names_the_argument(tmp_path):
    from dsteer_eval.metrics.samples import load_sample

    with pytest.raises(FileNotFoundError, match="dataset_kwargs.sample="):
        load_sample(str(tmp_path / "nope.jsonl"))


@pytest.mark.embedded
def test_every_mini_task_on_the_embedded_model(tmp_path):
    """`--model steered` defaults: embedded SmolLM2 + shipped DPO adapter + shipped vector;
    the judge is the embedded model loaded unsteered."""
    with env_vars(DSTEER_JUDGE="smollm2", DSTEER_TOXICITY_SCORER="offline"):
        out = evaluate("alpha=-1.0", ["dsteer_mini"], 2, gen_kwargs="max_gen_toks=24")
    res = out["results"]
    for task in MINI_TASKS:
        assert task in res
    assert res["dsteer_geval_mini"]["judge,judged"].startswith("smollm2")
    assert 1.0 <= res["dsteer_geval_mini"]["geval_helpfulness,judged"] <= 5.0
    assert res["dsteer_fidelity_mini"]["reference_model,scored"].startswith("unsteered:")
    assert res["dsteer_toxicity_mini"]["n_scored,scored"] == 2
    assert 0.0 <= res["truthfulqa_mc2_mini"]["acc,none"] <= 1.0
