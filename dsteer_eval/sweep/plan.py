"""A sweep's plan: its settings (:class:`SweepConfig`), everything parsed and checked before a model loads
(:class:`Plan`: the grid, the tasks, the vector, the resume fingerprint), and the output folder's check
against an earlier run (``sweep.json``: a re-run must match it, naming what changed)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path


from dsteer_eval.common.hashing import sha256_file, sha256_tree
from dsteer_eval.common.output_folder import atomic_write_text
from dsteer_eval.common.redaction import redact, register_model_args
from dsteer_eval.data.preference_pairs import load_pairs
from dsteer_eval.dpo.extract import unique_prompts
from dsteer_eval.adapters.plugin import tasks_dir
from dsteer_eval.tasks.task_files import task_definition_files
from dsteer_eval.models.defaults import resolve_default_pair
from dsteer_eval.models.embedded import resolve_pretrained
from dsteer_eval.steering.controls import parse_controls
from dsteer_eval.sweep import control_seed, fingerprint, grid
from dsteer_eval.sweep.ceiling import (
    FORMAT as CEILING_FORMAT,
    ceiling_for,
    check_same_steering,
    parse_relative,
    relative_alphas,
)
from dsteer_eval.vectors import load_vectors

log = logging.getLogger(__name__)

FORMAT = "dsteer-eval/sweep"
# settings that change the numbers of a point: a re-run into the same folder must keep them
FIRST_KEYS = ("model_args", "vector_sha256", "limit", "num_fewshot", "gen_kwargs", "apply_chat_template", "probe_data")
# ... and since fingerprint_version 2 (dsteer_eval.sweep.fingerprint): scorer, judge and reference model
FINGERPRINT_VERSION = "2"
FINGERPRINT_KEYS = (*FIRST_KEYS, "toxicity_scorer", "toxicity_label", "judge", "judge_base_url", "reference_model",
                    "model_arg_secrets", "backend")  # backend: None for hf (so earlier sweeps resume), "vllm"


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
    control_seed: int | None = None  # the controls' seed; None: the resumed sweep's, else derived (control_seed.py)
    base_alphas: str | None = "auto"  # the base side (adapter off): "auto", "none" or a comma list
    backend: str = "hf"  # "hf" | "vllm" (dsteer_eval.sweep.vllm_lm: one steered-vllm engine per side)


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
    control_seed_source: str | None = None  # where settings["control_seed"] came from (control_seed.resolve)

    def point_args(self, point) -> str:
        """``point``'s model args as a plain ``lm_eval --model steered`` run would take them (a control's seed
        included)."""
        return point.model_args(self.base_args, control_seed=self.settings.get("control_seed"))


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


def vector_for(kwargs: dict) -> str:
    if kwargs.get("steer_path"):
        raise ValueError("--model-args: dsteer-eval sweep steers with vector= (safetensors); steer_path= is not supported")
    return resolve_default_pair(kwargs.get("pretrained"), pair=kwargs.get("pair"), vector=kwargs.get("vector"),
                                vector_pair=kwargs.get("vector_pair"),
                                peft=kwargs.get("peft")).vector


def num_layers_of(vf, pretrained) -> int:
    if "num_layers" in vf.metadata:
        return int(vf.metadata["num_layers"])
    from transformers import AutoConfig  # deferred: transformers loads only when a file lacks num_layers (config only)

    return int(AutoConfig.from_pretrained(resolve_pretrained(pretrained)).num_hidden_layers)


_MANAGERS: dict = {}


def _task_files_state(include_path) -> tuple:
    """(file, mtime, size) of every task YAML under ``include_path`` and dsteer-eval's ``tasks/``."""
    paths = [include_path] if isinstance(include_path, (str, os.PathLike)) else list(include_path or [])
    found = []
    for root in [tasks_dir(), *paths]:
        root = Path(root)
        files = [root] if root.is_file() else sorted(root.rglob("*.y*ml")) if root.is_dir() else []
        found += [(str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files]
    return tuple(found)


def task_manager_for(include_path=None):
    """lm-eval's ``TaskManager`` for ``include_path``, built once per process while the task YAMLs under it and under
    dsteer-eval's ``tasks/`` stay as they were (a file added, removed or edited builds a new one): indexing lm-eval's
    ~15,000 tasks takes seconds each time, and a process that plans several sweeps (a notebook, the tests) pays it
    once."""
    from lm_eval.tasks import TaskManager  # deferred: lm-eval internals load only when this path runs

    key = (TaskManager, repr(include_path), _task_files_state(include_path))
    if key not in _MANAGERS:
        while len(_MANAGERS) >= 4:  # a few kept, the oldest dropped first
            _MANAGERS.pop(next(iter(_MANAGERS)))
        _MANAGERS[key] = TaskManager(include_path=include_path)
    return _MANAGERS[key]


def plan_sweep(config: SweepConfig) -> Plan:
    """Check the grid, tasks, vector and output folder; raise ValueError naming the argument."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("dsteer-eval sweep runs in one process; for data parallel run `accelerate launch -m lm_eval "
                         "--model steered ...` once per alpha and combine the folders with `dsteer-eval leaderboard` "
                         "(docs/scaling.md)")

    backend = str(config.backend or "hf").strip().lower()
    if backend not in ("hf", "vllm"):
        raise ValueError(f"--backend {config.backend!r}: use hf or vllm")
    relative = parse_relative(config.alphas)  # rel:... or auto: multiples of the vector's strength ceiling
    if backend == "vllm" and (config.probes or relative is not None):
        raise ValueError("--backend vllm: --probes and --alphas rel:/auto need the HF model's own forward passes; "
                         "run them with --backend hf")
    alphas = grid.parse_alpha_grid(config.alphas) if relative is None else None
    if relative is None and config.ceiling:
        raise ValueError("--ceiling goes with --alphas rel:... or --alphas auto")
    load_args, kwargs, layer_arg = split_model_args(config.model_args)
    secrets = register_model_args(kwargs)  # token=, api_key= ...: masked in every file, log and message from now on
    base_args = redact(load_args)
    vector = vector_for(kwargs)
    vf = load_vectors(vector, argument="vector")
    if config.layers:
        layers = grid.parse_layer_grid(config.layers)
    elif layer_arg:
        layers = grid.parse_layer_grid(layer_arg.replace(";", ","))
    elif "default_layer" in vf.metadata:
        layers = (int(vf.metadata["default_layer"]),)
    else:
        raise ValueError(f"--layers is required: {vector} names no default layer")
    grid.check_layers(layers, num_layers_of(vf, kwargs.get("pretrained")), set(vf.vectors), str(vector))
    tasks = tuple(p.strip() for p in config.tasks.split(",")) if config.tasks else ()
    if not tasks or any(not t for t in tasks):
        raise ValueError(f"--tasks {config.tasks!r}: give a comma-separated list of lm-eval tasks or groups")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"--tasks {config.tasks!r} names a task twice")
    task_manager = task_manager_for(config.include_path)
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
        "backend": None if backend == "hf" else backend,  # vLLM's numbers differ from HF's in float rounding
    }
    settings.update(sweep_fingerprint(kwargs))
    settings["contents"].update(task_contents(tasks, task_manager))
    out = Path(config.output)
    controls = parse_controls(config.controls)
    settings["control_seed"], seed_source = None, None
    if controls:
        settings["control_seed"], seed_source = control_seed.resolve(
            model_arg=kwargs.get("control_seed"), flag=config.control_seed,
            recorded=None if config.overwrite else control_seed.recorded_seed(read_record(out)),
            derive=lambda: control_seed.derived_seed(
                settings, tasks=tasks, layers=layers, alphas=config.alphas if alphas is None else alphas,
                base_alphas=config.base_alphas if alphas is None else base_side_alphas(config.base_alphas, alphas, kwargs),
                controls=controls))
        if "control_seed" not in kwargs:
            load_args = ",".join(x for x in (load_args, f"control_seed={settings['control_seed']}") if x)
    check_output(out, settings, config.overwrite)

    if relative is not None:
        if len(layers) != 1:
            raise ValueError("--alphas rel:/auto: the ceiling belongs to one layer; give one --layers value")

        alphas = relative_alphas(relative, ceiling_of(config, kwargs, layers[0], out))
    base_alphas = base_side_alphas(config.base_alphas, alphas, kwargs)
    points = grid.points(layers, alphas, base_alphas=base_alphas, controls=controls)
    return Plan(config, base_args, kwargs, layers, alphas, tasks, points, str(vector), out, settings, task_manager,
                load_args, seed_source)


def ceiling_of(config: SweepConfig, kwargs: dict, layer, out: Path) -> dict:
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
    data = ceiling_for(kwargs, layer, probe_prompts_for(config)[:16], device=config.device)
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return data


def has_adapter(kwargs: dict) -> bool:
    """Whether the sweep's model carries a PEFT adapter (explicit peft=, or the shipped pair's default)."""
    peft = str(kwargs.get("peft", "")).strip()
    if peft:
        return peft.lower() != "none"
    return not kwargs.get("vector")  # the shipped vector comes with the shipped DPO adapter


def base_side_alphas(text: str | None, alphas: tuple, kwargs: dict) -> tuple:
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


def sweep_fingerprint(kwargs: dict) -> dict:
    """Scorer/judge/reference settings and the contents of every model file (cheap hashes), see fingerprint.py."""

    default_adapter = None
    if not kwargs.get("vector") and "peft" not in kwargs:  # the shipped vector brings the shipped DPO adapter
        default_adapter = resolve_default_pair(kwargs.get("pretrained"), pair=kwargs.get("pair")).peft
    settings, contents = fingerprint.environment_settings()
    model = fingerprint.model_contents(kwargs, default_adapter=default_adapter)
    return {"fingerprint_version": FINGERPRINT_VERSION, **settings,
            "contents": {**{f"{k}=": v for k, v in model.items()}, **contents}}


def task_contents(tasks, task_manager) -> dict[str, dict]:
    """``{"task NAME": {"sha256", "path", "files": {role: {"path", "sha256"}}}}``: the content of every file that
    defines each task and group member (its YAML, included templates, utils.py, local data), so a resume on
    edited documents, or on another --include-path folder with the same task names, is refused."""

    out = {}
    for task, files in task_definition_files(tasks, task_manager).items():
        hashed = {role: {"path": str(path.resolve()), "sha256": sha256_tree(path)}
                  for role, path in sorted(files.items())}
        combined = hashlib.sha256(json.dumps({r: f["sha256"] for r, f in hashed.items()}, sort_keys=True).encode())
        out[f"task {task}"] = {"sha256": combined.hexdigest(), "path": hashed.get("yaml", {}).get("path"),
                               "files": hashed}
    return out


def changed_task_files(name: str, then: dict, now: dict) -> str:
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


def read_record(out: Path) -> dict | None:
    """The earlier run's ``sweep.json`` in ``out`` (None when the folder is new or empty); an unreadable one
    raises, naming the file and the way out."""
    record = out / "sweep.json"
    if not out.exists() or not any(out.iterdir()):
        return None
    if not record.is_file():
        raise ValueError(f"--output {out} exists and is not a sweep folder; choose a new folder or pass --overwrite")
    try:
        data = json.loads(record.read_text())
        if not isinstance(data, dict) or not isinstance(data["settings"], dict):
            raise TypeError("'settings' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--output {out}: cannot read {record} ({exc}); choose a new folder or pass "
                         f"--overwrite") from None
    return data


def check_output(out: Path, settings: dict, overwrite: bool) -> None:
    full = None if overwrite else read_record(out)
    if full is None:
        return
    previous = full["settings"]
    # a sweep.json written before fingerprint_version 2 lacks the newer keys: they are taken as unchanged
    legacy = "fingerprint_version" not in previous
    changed = [f"{k}: {previous.get(k)!r} then, {settings.get(k)!r} now" for k in FINGERPRINT_KEYS
               if not (legacy and k not in FIRST_KEYS) and previous.get(k) != settings.get(k)]
    then = previous.get("contents") if isinstance(previous.get("contents"), dict) else {}
    now = settings.get("contents", {})
    for name in ([] if legacy else sorted(set(then) | set(now))):
        old, new = field_of(then.get(name), "sha256"), field_of(now.get(name), "sha256")
        if old is not None and new is not None and old != new:  # None: files not found (yet), see fingerprint.py
            if name.startswith("task "):
                changed.append(changed_task_files(name, then[name], now[name]))
                continue
            where = field_of(now.get(name), "path") or field_of(then.get(name), "path")
            changed.append(f"the contents of {name} ({where}) changed: sha256 {old[:16]} then, {new[:16]} now")
    was, now = control_seed.recorded_seed(full), settings.get("control_seed")
    if was is not None and now is not None and was != now:
        changed.append(f"control_seed: {was} then, {now} now (other random directions)")
    if legacy:
        log.warning("sweep: %s was written before the scorer/judge/model-contents fingerprint; resuming on the "
                    "assumption that they did not change", out / "sweep.json")
    if changed:
        raise ValueError(f"--output {out} holds a sweep with other settings ({'; '.join(changed)}); resuming would "
                         f"mix incomparable results. Choose a new folder (--output) or pass --overwrite to start over")


def field_of(entry, key: str):
    value = entry.get(key) if isinstance(entry, dict) else None
    return value if isinstance(value, str) else None


def probe_pairs(config: SweepConfig):
    return load_pairs(config.probe_data or f"{tasks_dir()}/hh/hh_mini.jsonl")


def probe_prompts_for(config: SweepConfig) -> list:
    return unique_prompts(probe_pairs(config))
