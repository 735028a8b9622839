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

import hashlib
import inspect
import json
import logging
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from dsteer_eval import __version__
from dsteer_eval.common import provenance
from dsteer_eval.common.hashing import sha256_file, sha256_tree
from dsteer_eval.common.output_folder import atomic_write_text, empty_folder, folder_lock, staged_folder
from dsteer_eval.common.redaction import redact, register_model_args
from dsteer_eval.data.preference_pairs import load_pairs
from dsteer_eval.dpo.extract import unique_prompts
from dsteer_eval.dpo.model_pair import ModelPair
from dsteer_eval.dpo.training import read_card
from dsteer_eval.harness.plugin import tasks_dir
from dsteer_eval.harness.task_files import task_data_files, task_definition_files
from dsteer_eval.leaderboard.collect import number
from dsteer_eval.models.defaults import model_name, resolve_default_pair
from dsteer_eval.models.embedded import resolve_pretrained
from dsteer_eval.models.identity import model_entry
from dsteer_eval.probes.report import run_probes, write_report
from dsteer_eval.steering.args import resolve_site
from dsteer_eval.steering.controls import DEFAULT_SEED, parse_controls
from dsteer_eval.sweep import fingerprint, grid
from dsteer_eval.sweep.ceiling import (
    FORMAT as CEILING_FORMAT,
    ceiling_for,
    check_same_steering,
    parse_relative,
    relative_alphas,
)
from dsteer_eval.sweep.point_probes import PointProbes
from dsteer_eval.sweep.sweep_lm import SweepLM
from dsteer_eval.sweep.units import check_unit, unit_done, unit_folder  # unit_done: the resume rule
from dsteer_eval.sweep.winrates import sweep_winrates
from dsteer_eval.vectors import load_vectors

log = logging.getLogger(__name__)

FORMAT = "dsteer-eval/sweep"
# settings that change the numbers of a point: a re-run into the same folder must keep them
FIRST_KEYS = ("model_args", "vector_sha256", "limit", "num_fewshot", "gen_kwargs", "apply_chat_template", "probe_data")
# ... and since fingerprint_version 2 (dsteer_eval.sweep.fingerprint): scorer, judge and reference model
FINGERPRINT_VERSION = "2"
FINGERPRINT_KEYS = (*FIRST_KEYS, "toxicity_scorer", "toxicity_label", "judge", "judge_base_url", "reference_model",
                    "model_arg_secrets")


@dataclass
class SweepConfig:
    model_args: str
    alphas: str
    tasks: str
    output: str
    layers: str | None = None
    limit: float | None = None
    batch_size: int | str = 8
    device: str | None = None
    log_samples: bool = False
    probes: bool = False
    probe_data: str | None = None
    include_path: str | None = None
    num_fewshot: int | None = None
    gen_kwargs: str | None = None
    apply_chat_template: bool = False
    shared_prefix: bool = True
    overwrite: bool = False
    ceiling: str | None = None  # ceiling.json for --alphas rel:... (dsteer-eval ceiling)
    controls: str | None = None  # "random:K": K norm-matched random directions beside every steered point
    base_alphas: str | None = "auto"  # the base side (adapter off): "auto", "none" or a comma list


@dataclass
class Plan:
    """A checked sweep: everything the run needs, built without loading a model."""

    config: SweepConfig
    base_args: str  # the model args as stored, logged and printed: secret-looking values masked
    model_kwargs: dict
    layers: tuple
    alphas: tuple
    tasks: tuple
    points: list
    vector: str
    out: Path
    settings: dict
    task_manager: object = field(repr=False, default=None)
    load_args: str = field(repr=False, default="")  # the model args the model is built from (secrets in clear)


def split_model_args(text: str) -> tuple[str, dict, str | None]:
    """``(model_args without layer/alpha, their dict, the layer= value)``; ``alpha=`` is refused."""
    kept, kwargs, layer = [], {}, None
    for item in (p.strip() for p in (text or "").split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--model-args: {item!r} is not key=value")
        if key == "alpha":
            raise ValueError("--model-args: alpha= is the swept axis; give the values with --alphas")
        if key == "layer":
            layer = value.strip()
            continue
        kept.append(f"{key}={value.strip()}")
        kwargs[key] = value.strip()
    return ",".join(kept), kwargs, layer


def _vector_for(kwargs: dict) -> str:
    if kwargs.get("steer_path"):
        raise ValueError("--model-args: dsteer-eval sweep steers with vector= (safetensors); steer_path= is not supported")
    return resolve_default_pair(kwargs.get("pretrained"), pair=kwargs.get("pair"), vector=kwargs.get("vector"),
                                peft=kwargs.get("peft")).vector


def _num_layers(vf, pretrained) -> int:
    if "num_layers" in vf.metadata:
        return int(vf.metadata["num_layers"])
    from transformers import AutoConfig  # deferred: transformers loads only when a file lacks num_layers (config only)


    return int(AutoConfig.from_pretrained(resolve_pretrained(pretrained)).num_hidden_layers)


def plan_sweep(config: SweepConfig) -> Plan:
    """Check the grid, tasks, vector and output folder; raise ValueError naming the argument."""
    from lm_eval.tasks import TaskManager  # deferred: lm-eval internals load only when this path runs


    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("dsteer-eval sweep runs in one process; for data parallel run `accelerate launch -m lm_eval "
                         "--model steered ...` once per alpha and combine the folders with `dsteer-eval leaderboard` "
                         "(docs/scaling.md)")

    relative = parse_relative(config.alphas)  # rel:... or auto: multiples of the vector's strength ceiling
    alphas = grid.parse_alpha_grid(config.alphas) if relative is None else None
    if relative is None and config.ceiling:
        raise ValueError("--ceiling goes with --alphas rel:... or --alphas auto")
    load_args, kwargs, layer_arg = split_model_args(config.model_args)
    secrets = register_model_args(kwargs)  # token=, api_key= ...: masked in every file, log and message from now on
    base_args = redact(load_args)
    vector = _vector_for(kwargs)
    vf = load_vectors(vector, argument="vector")
    if config.layers:
        layers = grid.parse_layer_grid(config.layers)
    elif layer_arg:
        layers = grid.parse_layer_grid(layer_arg.replace(";", ","))
    elif "default_layer" in vf.metadata:
        layers = (int(vf.metadata["default_layer"]),)
    else:
        raise ValueError(f"--layers is required: {vector} names no default layer")
    grid.check_layers(layers, _num_layers(vf, kwargs.get("pretrained")), set(vf.vectors), str(vector))
    tasks = tuple(p.strip() for p in config.tasks.split(",")) if config.tasks else ()
    if not tasks or any(not t for t in tasks):
        raise ValueError(f"--tasks {config.tasks!r}: give a comma-separated list of lm-eval tasks or groups")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"--tasks {config.tasks!r} names a task twice")
    task_manager = TaskManager(include_path=config.include_path)
    grid.check_tasks(tasks, task_manager)
    if config.limit is not None and not config.limit > 0:
        raise ValueError(f"--limit {config.limit}: must be > 0 (a count, or a fraction below 1)")
    if config.probe_data and not Path(config.probe_data).is_file():
        raise FileNotFoundError(f"--probe-data {config.probe_data}: no such file")
    settings = {
        "model_args": base_args,
        "vector_sha256": sha256_file(vector),
        "limit": config.limit,
        "num_fewshot": config.num_fewshot,
        "gen_kwargs": config.gen_kwargs,
        "apply_chat_template": config.apply_chat_template,
        "probe_data": config.probe_data,
        "model_arg_secrets": secrets or None,  # sha256 per secret key: a changed token is noticed, never stored
    }
    settings.update(_fingerprint(kwargs))
    settings["contents"].update(_task_contents(tasks, task_manager))
    out = Path(config.output)
    _check_output(out, settings, config.overwrite)

    controls = parse_controls(config.controls)
    if relative is not None:
        if len(layers) != 1:
            raise ValueError("--alphas rel:/auto: the ceiling belongs to one layer; give one --layers value")

        alphas = relative_alphas(relative, _ceiling(config, kwargs, layers[0], out))
    base_alphas = _base_alphas(config.base_alphas, alphas, kwargs)
    points = grid.points(layers, alphas, base_alphas=base_alphas, controls=controls)
    return Plan(config, base_args, kwargs, layers, alphas, tasks, points, str(vector), out, settings, task_manager,
                load_args)


def _ceiling(config: SweepConfig, kwargs: dict, layer, out: Path) -> dict:
    """The ceiling for relative alphas: --ceiling FILE, else OUT/ceiling.json of an earlier run, else (for
    --alphas auto) measured now on the probe prompts and written to OUT/ceiling.json."""
    path = Path(config.ceiling) if config.ceiling else out / "ceiling.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("format") != CEILING_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}")
            data["negative"]["ceiling"], data["positive"]["ceiling"]  # noqa: B018 - shape check
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"--ceiling {path}: not a dsteer-eval ceiling file ({exc}); make one with "
                             f"`dsteer-eval ceiling`") from None
        if str(data.get("layer")) != str(layer):
            raise ValueError(f"--ceiling {path} was measured at layer {data.get('layer')}, the sweep steers layer {layer}")
        check_same_steering(data, kwargs, f"--ceiling {path}")
        return data
    if config.ceiling:
        raise FileNotFoundError(f"--ceiling {config.ceiling}: no such file")
    if str(config.alphas).strip().lower() != "auto":
        raise ValueError("--alphas rel:... needs --ceiling FILE (from `dsteer-eval ceiling`); --alphas auto measures it")
    data = ceiling_for(kwargs, layer, _probe_prompts_for(config)[:16], device=config.device)
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return data


def has_adapter(kwargs: dict) -> bool:
    """Whether the sweep's model carries a PEFT adapter (explicit peft=, or the shipped pair's default)."""
    peft = str(kwargs.get("peft", "")).strip()
    if peft:
        return peft.lower() != "none"
    return not kwargs.get("vector")  # the shipped vector comes with the shipped DPO adapter


def _base_alphas(text: str | None, alphas: tuple, kwargs: dict) -> tuple:
    """``--base-alphas``: ``auto`` = α=0 plus the grid's positive α when the model has an adapter (the
    base model, and base + α·v: does v reproduce the DPO model?), else none; ``none``; or a list."""
    value = "auto" if text is None else str(text).strip().lower()
    if value == "none":
        return ()
    if value == "auto":
        return (0.0, *(a for a in alphas if a > 0)) if has_adapter(kwargs) else ()
    if not has_adapter(kwargs):
        raise ValueError("--base-alphas: the model has no PEFT adapter to switch off (give peft=... in "
                         "--model-args, or use the default shipped pair)")
    return grid.parse_alpha_grid(text, flag="--base-alphas")


def _fingerprint(kwargs: dict) -> dict:
    """Scorer/judge/reference settings and the contents of every model file (cheap hashes), see fingerprint.py."""

    default_adapter = None
    if not kwargs.get("vector") and "peft" not in kwargs:  # the shipped vector brings the shipped DPO adapter
        default_adapter = resolve_default_pair(kwargs.get("pretrained"), pair=kwargs.get("pair")).peft
    settings, contents = fingerprint.environment_settings()
    model = fingerprint.model_contents(kwargs, default_adapter=default_adapter)
    return {"fingerprint_version": FINGERPRINT_VERSION, **settings,
            "contents": {**{f"{k}=": v for k, v in model.items()}, **contents}}


def _task_contents(tasks, task_manager) -> dict[str, dict]:
    """``{"task NAME": {"sha256", "path", "files": {role: {"path", "sha256"}}}}``: the content of every file that
    defines each task and group member (its YAML, included templates, utils.py, local data), so a resume on
    edited documents, or on another --include-path folder with the same task names, is refused."""

    out = {}
    for task, files in task_definition_files(tasks, task_manager).items():
        hashed = {role: {"path": str(path.resolve()), "sha256": _full_digest(path, sha256_file)}
                  for role, path in sorted(files.items())}
        combined = hashlib.sha256(json.dumps({r: f["sha256"] for r, f in hashed.items()}, sort_keys=True).encode())
        out[f"task {task}"] = {"sha256": combined.hexdigest(), "path": hashed.get("yaml", {}).get("path"),
                               "files": hashed}
    return out


def _full_digest(path: Path, sha256_file) -> str:
    """sha256 of a file, or of a folder's files with their relative names (task data is small: read whole)."""
    if path.is_file():
        return sha256_file(path)

    return sha256_tree(path)


def _changed_task_files(name: str, then: dict, now: dict) -> str:
    """Which of a task's files changed, by role, naming the path now."""
    old_files = then.get("files") if isinstance(then.get("files"), dict) else {}
    new_files = now.get("files") if isinstance(now.get("files"), dict) else {}
    parts = []
    for role in sorted(set(old_files) | set(new_files)):
        old, new = old_files.get(role) or {}, new_files.get(role) or {}
        if old.get("sha256") != new.get("sha256") or old.get("path") != new.get("path"):
            where = new.get("path") or old.get("path")
            what = "added" if not old else "gone" if not new else "changed"
            parts.append(f"{where} {what}")
    return f"{name}: {', '.join(parts) or 'its files changed'}"


def _check_output(out: Path, settings: dict, overwrite: bool) -> None:
    record = out / "sweep.json"
    if overwrite or not out.exists() or not any(out.iterdir()):
        return
    if not record.is_file():
        raise ValueError(f"--output {out} exists and is not a sweep folder; choose a new folder or pass --overwrite")
    try:
        previous = json.loads(record.read_text())["settings"]
        if not isinstance(previous, dict):
            raise TypeError("'settings' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--output {out}: cannot read {record} ({exc}); choose a new folder or pass "
                         f"--overwrite") from None
    # a sweep.json written before fingerprint_version 2 lacks the newer keys: they are taken as unchanged
    legacy = "fingerprint_version" not in previous
    changed = [f"{k}: {previous.get(k)!r} then, {settings.get(k)!r} now" for k in FINGERPRINT_KEYS
               if not (legacy and k not in FIRST_KEYS) and previous.get(k) != settings.get(k)]
    then = previous.get("contents") if isinstance(previous.get("contents"), dict) else {}
    now = settings.get("contents", {})
    for name in ([] if legacy else sorted(set(then) | set(now))):
        old, new = _field(then.get(name), "sha256"), _field(now.get(name), "sha256")
        if old is not None and new is not None and old != new:  # None: files not found (yet), see fingerprint.py
            if name.startswith("task "):
                changed.append(_changed_task_files(name, then[name], now[name]))
                continue
            where = _field(now.get(name), "path") or _field(then.get(name), "path")
            changed.append(f"the contents of {name} ({where}) changed: sha256 {old[:16]} then, {new[:16]} now")
    if legacy:
        log.warning("sweep: %s was written before the scorer/judge/model-contents fingerprint; resuming on the "
                    "assumption that they did not change", record)
    if changed:
        raise ValueError(f"--output {out} holds a sweep with other settings ({'; '.join(changed)}); resuming would "
                         f"mix incomparable results. Choose a new folder (--output) or pass --overwrite to start over")


def _field(entry, key: str):
    value = entry.get(key) if isinstance(entry, dict) else None
    return value if isinstance(value, str) else None


# ----------------------------------------------------------------- running
def run_provenance(plan: Plan) -> dict:
    """How this run of the sweep was made (dsteer_eval.common.provenance): the vector, each task's shipped data
    file and the probe data, the model files, lm-eval's seeds (its defaults: the sweep passes none) and the random controls' seed."""

    import lm_eval  # deferred: lm-eval internals load only when this path runs


    data = [provenance.data_entry(plan.vector, "vector")]
    data += [provenance.data_entry(path, f"task:{task}") for task, path in task_data_files(plan.tasks).items()]
    if plan.config.probes:

        data.append(provenance.data_entry(plan.config.probe_data or f"{tasks_dir()}/hh/hh_mini.jsonl", "probe_data"))
    models = [model_entry("base", model_name(plan.model_kwargs.get("pretrained")))]
    adapter = _field(plan.settings.get("contents", {}).get("peft="), "path")  # peft=, or the shipped adapter
    if adapter:
        models.append(model_entry("adapter", adapter))
    seeds = {f"lm_eval_{name}": p.default for name, p in inspect.signature(lm_eval.simple_evaluate).parameters.items()
             if name.endswith("seed")}
    if any(p.control is not None for p in plan.points):
        seeds["controls"] = DEFAULT_SEED
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
            model=lm, model_args=point.model_args(plan.base_args), tasks=[task], limit=cfg.limit,
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
    are the filtered responses: log-likelihoods (one per choice) or generated texts."""

    out = {}
    for task, rows in samples.items():
        rows = sorted(rows, key=lambda r: r["doc_id"])
        names = sorted({m for r in rows for m in r.get("metrics", [])})
        resps = []
        for r in rows:
            found = r.get("filtered_resps", [])
            resps.append([x[0] if isinstance(x, (list, tuple)) and x and isinstance(x[0], (int, float)) else
                          x if isinstance(x, (int, float, str)) else str(x) for x in found])
        out[task] = {
            "doc_id": [r["doc_id"] for r in rows],
            "metrics": {m: [number(float(r[m]) if isinstance(r.get(m), bool) else r.get(m)) for r in rows]
                        for m in names},
            "resps": resps,
        }
    return {"format": "dsteer-eval/per-doc", "tasks": out}


def _record_failure(plan: Plan, point, task: str, folder: Path, exc: BaseException) -> None:
    """``failed.json`` with the error and traceback, secrets redacted; never raises (a full disk)."""
    text = json.dumps({
        "format": "dsteer-eval/failed-task", "task": task, "model_args": point.model_args(plan.base_args),
        "error": redact(f"{type(exc).__name__}: {exc}"),
        "traceback": redact("".join(traceback.format_exception(exc))),
    }, indent=1) + "\n"
    try:
        with staged_folder(folder) as tmp:
            (tmp / "failed.json").write_text(text)
    except Exception as write_error:  # noqa: BLE001 - the unit stays not done: the next run retries it anyway
        log.error("sweep: could not record the failure of %s in %s: %s", task, folder / "failed.json",
                  redact(write_error))


def run_sweep(config: SweepConfig, *, print_fn=print) -> int:
    """Run (or resume) a sweep; returns the number of failed (point, task) units."""
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
                result = point_probes.measure(lm.interventions, point.model_args(plan.base_args))
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
    extra = {"batch_size": cfg.batch_size, "device": cfg.device, "shared_prefix": cfg.shared_prefix}
    return SweepLM(**(extra | args), layer=plan.layers[0], alpha=0.0)


def _probe_prompts(plan: Plan) -> tuple[list, object]:

    pairs = _probe_pairs(plan.config)
    return unique_prompts(pairs), pairs


def _probe_pairs(config: SweepConfig):

    return load_pairs(config.probe_data or f"{tasks_dir()}/hh/hh_mini.jsonl")


def _probe_prompts_for(config: SweepConfig) -> list:

    return unique_prompts(_probe_pairs(config))


def _point_probes(lm, plan: Plan):

    prompts, _ = _probe_prompts(plan)
    fallback = resolve_site(plan.layers[0], lm.parts.num_layers)
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
    report = run_probes(pair, pairs, vectors=vf.vectors, layer=resolve_site(plan.layers[0], lm.parts.num_layers),
                        vector_info={"source": str(vf.path), "method": vf.metadata.get("method", "")},
                        alphas=sorted({abs(a) for a in plan.alphas}), beta=beta, grad_pairs=16,
                        data_info={"source": pairs.source, "skipped": dict(pairs.skipped)})
    write_report(report, out, overwrite=True, provenance=provenance)
    print_fn(f"sweep: wrote {out}/probe_report.json")
