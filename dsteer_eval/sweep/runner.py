"""``dsteer-eval sweep``: every (layer, alpha) point through lm-eval's evaluator, resumable.

Output folder::

    OUT/sweep.json                       settings and fingerprint (scorer, judge, reference model, model
                                         file contents); a re-run must match them.  Also the provenance
                                         of the run that wrote it (dsteer_eval.common.provenance) and of the
                                         runs it resumed (earlier_provenance): not compared on resume
    OUT/points/<point>/<task>/           one lm-eval output per (point, task):
        results_<date>.json              lm-eval's results schema (config.model_args names layer/alpha)
        samples_<task>_<date>.jsonl      with --log-samples, and always for win-rate tasks
      or failed.json                     the error, when the task raised
    OUT/points/<point>/probes.json       --probes: projection margin, restoration KL
    OUT/points/<point>/winrate/<task>.json   pairwise win-rate vs the alpha=0 point
    OUT/probe_report/                    --probes: the full probe report of the base/DPO pair
    OUT/leaderboard.{md,csv,json,html}, OUT/plots/

Each (point, task) folder is staged and renamed into place when complete, and
each JSON file is replaced atomically, so a killed sweep leaves finished units
whole and nothing half-written; the re-run skips them.  A unit is complete only
when its files pass :mod:`dsteer_eval.sweep.units` (lm-eval swallows write errors,
so a full disk would otherwise leave 0-byte results that count as done); that
check runs right after each unit and again before a resume skips it.  A failed
unit is tried again on the next run.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import time
import traceback
from pathlib import Path

from tqdm.auto import tqdm

from dsteer_eval import __version__
from dsteer_eval.common import provenance
from dsteer_eval.common.output_folder import atomic_write_text, empty_folder, folder_lock, staged_folder
from dsteer_eval.common.redaction import redact
from dsteer_eval.dpo.extract import unique_prompts
from dsteer_eval.dpo.model_pair import ModelPair
from dsteer_eval.dpo.training import read_card
from dsteer_eval.adapters.plugin import tasks_dir
from dsteer_eval.tasks.task_files import task_data_files
from dsteer_eval.leaderboard.collect import number
from dsteer_eval.models.defaults import model_name
from dsteer_eval.models.identity import model_entry
from dsteer_eval.probes.report import run_probes, write_report
from dsteer_eval.sweep.plan import (  # noqa: F401 (the sweep's public names, re-exported)
    FINGERPRINT_KEYS,
    FINGERPRINT_VERSION,
    FIRST_KEYS,
    FORMAT,
    Plan,
    SweepConfig,
    check_output,
    field_of,
    plan_sweep,
    probe_pairs,
    split_model_args,
)
from dsteer_eval.sweep.grid import layer_site
from dsteer_eval.sweep.point_probes import PointProbes
from dsteer_eval.sweep.sweep_lm import SweepLM
from dsteer_eval.sweep.units import check_unit, unit_done, unit_folder  # unit_done: the resume rule
from dsteer_eval.sweep.winrates import sweep_winrates

log = logging.getLogger(__name__)

def run_provenance(plan: Plan) -> dict:
    """How this run of the sweep was made (dsteer_eval.common.provenance): the vector, each task's shipped data
    file and the probe data, the model files, lm-eval's seeds (its defaults: the sweep passes none) and the random controls' seed."""

    import lm_eval  # deferred: lm-eval internals load only when this path runs

    data = [provenance.data_entry(plan.vector, "vector")]
    data += [provenance.data_entry(path, f"task:{task}") for task, path in task_data_files(plan.tasks).items()]
    if plan.config.probes:

        data.append(provenance.data_entry(plan.config.probe_data or f"{tasks_dir()}/hh/hh_mini.jsonl", "probe_data"))
    models = [model_entry("base", model_name(plan.model_kwargs.get("pretrained")))]
    adapter = field_of(plan.settings.get("contents", {}).get("peft="), "path")  # peft=, or the shipped adapter
    if adapter:
        models.append(model_entry("adapter", adapter))
    seeds = {f"lm_eval_{name}": p.default for name, p in inspect.signature(lm_eval.simple_evaluate).parameters.items()
             if name.endswith("seed")}
    if plan.settings.get("control_seed") is not None:
        seeds["controls"] = plan.settings["control_seed"]
        seeds["controls_source"] = plan.control_seed_source
    return provenance.collect(data=data, models=models, seeds=seeds)


def _earlier_provenance(record: Path) -> list:
    """The provenance of the runs that wrote ``record`` before (a resumed sweep), oldest first."""
    try:
        previous = json.loads(record.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(previous, dict):
        return []
    earlier = previous.get("earlier_provenance")
    earlier = list(earlier) if isinstance(earlier, list) else []
    return earlier + ([previous["provenance"]] if isinstance(previous.get("provenance"), dict) else [])


def _write_record(plan: Plan, provenance: dict | None = None) -> None:
    """``sweep.json``: the settings a resume must match, the grid, and the provenance of this run (and of
    the runs it resumes), which a resume does not compare (its command and time differ by nature)."""
    import lm_eval  # deferred: lm-eval internals load only when this path runs

    plan.out.mkdir(parents=True, exist_ok=True)
    record = plan.out / "sweep.json"
    earlier = _earlier_provenance(record)
    atomic_write_text(record, json.dumps({
        "format": FORMAT, "format_version": "1", "package_version": __version__,
        "lm_eval_version": getattr(lm_eval, "__version__", "?"),
        "settings": plan.settings, "vector": plan.vector,
        "layers": [str(x) for x in plan.layers], "alphas": list(plan.alphas), "tasks": list(plan.tasks),
        "points": [{"name": p.name, "side": p.side, "layer": None if p.layer is None else str(p.layer),
                    "alpha": p.alpha, "control": p.control} for p in plan.points],
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "provenance": provenance if provenance is not None else run_provenance(plan),
        **({"earlier_provenance": earlier} if earlier else {}),
    }, indent=1) + "\n")


def _evaluate_unit(lm, plan: Plan, point, task: str, folder: Path) -> dict:
    """One task at one point through lm_eval.simple_evaluate; written the way `lm_eval --output_path` does."""
    import lm_eval  # deferred: lm-eval internals load only when this path runs
    from lm_eval.loggers import EvaluationTracker  # deferred: lm-eval internals load only when this path runs

    cfg = plan.config
    with staged_folder(folder) as tmp:
        tracker = EvaluationTracker(output_path=str(tmp / "results.json"))
        results = lm_eval.simple_evaluate(
            model=lm, model_args=plan.point_args(point), tasks=[task], limit=cfg.limit,
            batch_size=cfg.batch_size, device=cfg.device, num_fewshot=cfg.num_fewshot, gen_kwargs=cfg.gen_kwargs,
            apply_chat_template=cfg.apply_chat_template, log_samples=True, evaluation_tracker=tracker,
            task_manager=plan.task_manager,
        )
        results["config"]["model"] = "steered"  # as `lm_eval --model steered --model_args ...` records it
        samples = results.pop("samples")
        # taken before lm-eval saves any samples: saving turns each response into a string in place
        # (log-likelihood pairs become "(-3.2, False)"), which would change the paired statistics
        per_doc = per_doc_values(samples)
        keep = [name for name, conf in results["configs"].items()
                if cfg.log_samples or (conf.get("metadata") or {}).get("winrate_criterion")]
        tracker.save_results_aggregated(results=results, samples=samples if keep else None)
        for name in keep:
            tracker.save_results_samples(task_name=name, samples=samples[name])
        atomic_write_text(tmp / PER_DOC, json.dumps(per_doc) + "\n")
        # lm-eval logs and swallows write errors (a full disk leaves a 0-byte or cut-off file): the
        # unit counts only when the resume rule accepts it; the error names the file as it would be
        check_unit(tmp, samples_for=keep, shown=folder)
    return results


PER_DOC = "per_doc.json"


def per_doc_values(samples: dict) -> dict:
    """``{task: {doc_id, metrics: {name: [value per doc]}, resps}}`` from lm-eval's samples: what paired
    statistics need (per-document metric values, and the responses that fix the conditioned subset),
    small enough to keep for every unit whether or not ``--log-samples`` keeps the full samples.

    A value that is not a number (a failed score, a list) is stored as None and never paired. ``resps``
    are the filtered responses: log-likelihoods (one per choice) or generated texts (:func:`_response`)."""

    out = {}
    for task, rows in samples.items():
        rows = sorted(rows, key=lambda r: r["doc_id"])
        names = sorted({m for r in rows for m in r.get("metrics", [])})
        resps = []
        for r in rows:
            resps.append([_response(x) for x in r.get("filtered_resps", [])])
        out[task] = {
            "doc_id": [r["doc_id"] for r in rows],
            "metrics": {m: [number(float(r[m]) if isinstance(r.get(m), bool) else r.get(m)) for r in rows]
                        for m in names},
            "resps": resps,
        }
    return {"format": "dsteer-eval/per-doc", "tasks": out}


def _response(x):
    """One filtered response as stored: a log-likelihood's number, a generated text (also the text inside a
    scoring filter's record, ``{"text": …}`` or ``{"answer": …}``), else its string form."""
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], (int, float)):
        return x[0]
    if isinstance(x, dict):
        text = next((x[k] for k in ("text", "answer") if isinstance(x.get(k), str)), None)
        return text if text is not None else str(x)
    return x if isinstance(x, (int, float, str)) else str(x)


def _record_failure(plan: Plan, point, task: str, folder: Path, exc: BaseException) -> None:
    """``failed.json`` with the error and traceback, secrets redacted; never raises (a full disk)."""
    text = json.dumps({
        "format": "dsteer-eval/failed-task", "task": task, "model_args": plan.point_args(point),
        "error": redact(f"{type(exc).__name__}: {exc}"),
        "traceback": redact("".join(traceback.format_exception(exc))),
    }, indent=1) + "\n"
    try:
        with staged_folder(folder) as tmp:
            (tmp / "failed.json").write_text(text)
    except Exception as write_error:  # noqa: BLE001 - the unit stays not done: the next run retries it anyway
        log.error("sweep: could not record the failure of %s in %s: %s", task, folder / "failed.json",
                  redact(write_error))


def run_sweep(config: SweepConfig, *, print_fn=print, hold_lock: bool = True) -> int:
    """Run (or resume) a sweep; returns the number of failed (point, task) units.  ``hold_lock=False``: the
    caller already holds the output folder's lock (the CLI holds it over the leaderboard and report too)."""
    if not hold_lock:
        return _run_locked(config, print_fn)
    with folder_lock(config.output, "--output"):  # one run per output folder, for the life of the run
        return _run_locked(config, print_fn)


def _run_locked(config: SweepConfig, print_fn) -> int:
    plan = plan_sweep(config)  # every check happens before the model loads
    if config.overwrite and plan.out.exists():
        empty_folder(plan.out)  # a symbolic link --output keeps its link
    provenance = run_provenance(plan)
    _write_record(plan, provenance)
    # staging (.*.tmp*) and replaced units set aside (.*.old*) left by a killed run: a unit is
    # only ever replaced when it is redone, so neither holds anything the re-run still needs
    for pattern in ("points/**/.*.tmp*", "points/**/.*.old*"):
        for stale in plan.out.glob(pattern):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    units = [(p, t) for p in plan.points for t in plan.tasks]
    todo = [(p, t) for p, t in units if not unit_done(unit_folder(plan.out, p, t))]
    probe_todo = [p for p in plan.points if config.probes and not (plan.out / "points" / p.name / "probes.json").is_file()]
    total = len(units) + (len(plan.points) if config.probes else 0)
    remaining = len(todo) + len(probe_todo)
    print_fn(f"sweep: {len(plan.points)} points x {len(plan.tasks)} task(s) -> {plan.out} "
             f"({total - remaining} of {total} units already done)")
    failures = 0
    report_missing = config.probes and not (plan.out / "probe_report" / "probe_report.json").is_file()
    lm = _load(plan) if remaining or report_missing else None
    bar = tqdm(total=total, initial=total - remaining, desc="sweep", unit="unit", position=0, dynamic_ncols=True)
    point_probes = None
    try:
        for point in plan.points:
            point_units = [t for p, t in todo if p == point]
            wants_probe = point in probe_todo
            if not point_units and not wants_probe:
                continue
            if wants_probe and point_probes is None:  # before set_point: its reference pass toggles the adapter
                point_probes = _point_probes(lm, plan)
            # alpha=0 keeps the first layer's unsteered states for the alphas after it
            lm.set_point(plan.layers[0] if point.layer is None else point.layer, point.alpha, point.side, point.control)
            lm.set_group(_generation_group(plan, point, todo), point.name)
            for task in point_units:
                bar.set_postfix_str(f"{point.name} {task}")
                folder = unit_folder(plan.out, point, task)
                try:
                    _evaluate_unit(lm, plan, point, task, folder)
                except Exception as exc:  # noqa: BLE001 - reported as failed, never as a number
                    failures += 1
                    log.error("sweep: %s at %s failed: %s", task, point.name, redact(exc))
                    _record_failure(plan, point, task, folder, exc)
                bar.update(1)
            if wants_probe:
                bar.set_postfix_str(f"{point.name} probes")
                result = point_probes.measure(lm.interventions, plan.point_args(point))
                atomic_write_text(plan.out / "points" / point.name / "probes.json", json.dumps(result, indent=1) + "\n")
                bar.update(1)
    finally:
        bar.close()
    if lm is not None and lm.shared is not None and lm.shared.stats["replayed"]:
        s = lm.shared.stats
        print_fn(f"sweep: shared lower layers: {s['full']} full and {s['replayed']} replayed log-likelihood "
                 f"batches (replay check: max |d logit| = {s['verified_max_abs_diff']})")

    sweep_winrates(plan, print_fn=print_fn)
    if report_missing:
        _probe_report(lm, plan, print_fn, provenance)
    return failures


def _generation_group(plan: Plan, point, todo) -> list:
    """``(name, layer, alpha, control)`` of the points still to run that share ``point``'s side and layer
    (α=0 counts with the first layer), from ``point`` on in run order; generation batches them
    (sweep_lm.set_group)."""
    def layer_of(p):
        return plan.layers[0] if p.layer is None else p.layer

    pending = {p for p, _ in todo}
    later = plan.points[plan.points.index(point):]  # the points before it have run already
    return [(p.name, layer_of(p), p.alpha, p.control) for p in later
            if p in pending and p.side == point.side and str(layer_of(p)) == str(layer_of(point))]


def _load(plan: Plan):
    from lm_eval.utils import simple_parse_args_string  # deferred: lm-eval internals load only when this path runs

    cfg = plan.config
    args = simple_parse_args_string(plan.load_args or plan.base_args)  # type-cast as `lm_eval --model_args` does
    if plan.settings.get("backend") == "vllm":
        from dsteer_eval.sweep.vllm_lm import VLLMSweepLM  # deferred: vLLM exists only in its own venv

        return VLLMSweepLM(args, batch_size=cfg.batch_size)
    extra = {"batch_size": cfg.batch_size, "device": cfg.device, "shared_prefix": cfg.shared_prefix}
    return SweepLM(**(extra | args), layer=plan.layers[0], alpha=0.0)


def _probe_prompts(plan: Plan) -> tuple[list, object]:
    pairs = probe_pairs(plan.config)
    return unique_prompts(pairs), pairs


def _point_probes(lm, plan: Plan):
    prompts, _ = _probe_prompts(plan)
    fallback = layer_site(plan.layers[0], lm.parts.num_layers)
    return PointProbes(lm.model, lm.tokenizer, lm.vector_file.vectors, lm.parts.num_layers, prompts,
                       fallback_site=fallback, batch_size=8)


def _probe_report(lm, plan: Plan, print_fn, provenance: dict | None = None) -> None:
    """The full probe report of the base/DPO pair (the loaded model with its adapter on and off)."""
    out = plan.out / "probe_report"
    if (out / "probe_report.json").is_file():
        return
    if lm is None or not callable(getattr(lm.model, "disable_adapter", None)):
        print_fn("sweep: probe_report/ skipped: the full probe report needs a base/DPO pair, i.e. a peft= adapter "
                 "(run `dsteer-eval probe` for two checkpoints)")
        return

    _, pairs = _probe_prompts(plan)
    adapter = plan.model_kwargs.get("peft") or lm.peft
    card = read_card(adapter) if adapter else None
    beta = float(card["hyperparameters"]["beta"]) if card else 0.1
    pair = ModelPair(lm.model, None, lm.tokenizer, model_name(plan.model_kwargs.get("pretrained")), str(adapter))
    vf = lm.vector_file
    report = run_probes(pair, pairs, vectors=vf.vectors, layer=layer_site(plan.layers[0], lm.parts.num_layers),
                        vector_info={"source": str(vf.path), "method": vf.metadata.get("method", "")},
                        alphas=sorted({abs(a) for a in plan.alphas}), beta=beta, grad_pairs=16,
                        data_info={"source": pairs.source, "skipped": dict(pairs.skipped)})
    write_report(report, out, overwrite=True, provenance=provenance)
    print_fn(f"sweep: wrote {out}/probe_report.json")
