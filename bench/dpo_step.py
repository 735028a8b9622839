"""Time one DPO step (loss + backward) of trl's DPOTrainer, trl defaults vs dsteer-eval's recipe.

Same process, same batch (4 HH pairs = 8 rows, max_length 160, LoRA r=8 on all
linear layers of the embedded SmolLM2-135M), same trl version; only the
settings differ:

  trl_defaults   DPOConfig as it comes: bf16 autocast + gradient checkpointing,
                 trl's fused chunked LM head (torch tile path on CPU)
  fp32_trl_head  bf16=False, gradient_checkpointing=False, trl's head
  recipe         bf16=False, gradient_checkpointing=False, dsteer-eval's
                 compact LM head (dsteer_eval.dpo.cpu_head) = what train-dpo runs
  plain          the obvious alternative: one policy forward with full logits,
                 log_softmax + gather, backward (no reference pass, not DPO)

Reports the median seconds of each and ratios to trl_defaults and to plain,
and checks that the three DPO variants give the same loss.

    python bench/dpo_step.py [--repeats 3] [--pairs 4] [--max-length 160]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(key, "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh_harmless_dev.jsonl.gz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per variant (trl_defaults: 1)")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=160)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "dpo_step.json"))
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dsteer_eval.dpo.training import DPOSettings, make_trainer
    from dsteer_eval.models.embedded import ensure_embedded
    from dsteer_eval.adapters.plugin import tasks_dir
    from dsteer_eval.data.preference_pairs import read_pairs

    path = ensure_embedded()
    tok = AutoTokenizer.from_pretrained(path)
    data = SHARED if SHARED.is_file() else Path(tasks_dir()) / "hh" / "hh_mini.jsonl"
    # The longest pairs whose prompt leaves room for a reply: rows padded/cut to ~max_length.
    def shortest_row(p):
        return min(len(tok(p.prompt + p.chosen).input_ids), len(tok(p.prompt + p.rejected).input_ids))

    fitting = [p for p in read_pairs(data) if len(tok(p.prompt).input_ids) <= args.max_length - 16]
    pairs = sorted(fitting, key=shortest_row, reverse=True)[: args.pairs]

    def build(variant: str):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        settings = DPOSettings(steps=1, batch_size=args.pairs, max_length=args.max_length,
                               max_prompt_length=args.max_length - 1, eval_size=0)
        if variant == "trl_defaults":
            settings.precision, settings.gradient_checkpointing, settings.lm_head = "bf16", True, "trl"
        elif variant == "fp32_trl_head":
            settings.precision, settings.lm_head = "fp32", "trl"
        else:
            settings.precision, settings.lm_head = "fp32", "compact"
        trainer = make_trainer(model, tok, pairs, settings, output_dir=tempfile.mkdtemp())
        trainer.model.train()
        if settings.gradient_checkpointing:  # what Trainer.train() does before the first step
            trainer.model.gradient_checkpointing_enable(trainer.args.gradient_checkpointing_kwargs)
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        return trainer, batch

    def dpo_step(trainer, batch):
        trainer.model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with trainer.accelerator.autocast():
            loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        seconds = time.perf_counter() - start
        # The loss is ln 2 at the start whatever the head; the policy log-probs are what a head computes.
        logps = trainer._metrics["train"]["logps/chosen"][-1] + trainer._metrics["train"]["logps/rejected"][-1]
        return seconds, logps

    def plain_step(trainer, batch):
        model = trainer.model
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        logp = torch.log_softmax(out.logits[:, :-1].float(), -1)
        logp = logp.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        (-(logp * batch["completion_mask"][:, 1:]).sum()).backward()
        return time.perf_counter() - start, None

    results, losses, shapes = {}, {}, None
    for variant in ("recipe", "fp32_trl_head", "plain", "trl_defaults"):
        trainer, batch = build("recipe" if variant == "plain" else variant)
        shapes = shapes or {"rows": tuple(batch["input_ids"].shape), "completion_tokens": int(batch["completion_mask"].sum())}
        step = plain_step if variant == "plain" else dpo_step
        repeats = 1 if variant == "trl_defaults" else args.repeats
        step(trainer, batch) if variant != "trl_defaults" else None  # warm-up (skipped for the slow one)
        runs = [step(trainer, batch) for _ in range(repeats)]
        results[variant] = statistics.median(t for t, _ in runs)
        if runs[0][1] is not None:
            losses[variant] = runs[0][1]
        print(f"{variant:14s} {results[variant]:8.2f} s/step  (runs {[round(t, 2) for t, _ in runs]})", flush=True)
        del trainer, batch

    report = {
        "what": "one DPOTrainer loss+backward on the same batch; median seconds",
        "model": "SmolLM2-135M-Instruct (embedded), LoRA r=8 all-linear",
        "data": str(data.name),
        "batch": shapes,
        "pairs": args.pairs,
        "max_length": args.max_length,
        "seconds": {k: round(v, 2) for k, v in results.items()},
        "speedup_recipe_vs_trl_defaults": round(results["trl_defaults"] / results["recipe"], 1),
        "speedup_recipe_vs_fp32_trl_head": round(results["fp32_trl_head"] / results["recipe"], 2),
        "recipe_over_plain_fwd_bwd": round(results["recipe"] / results["plain"], 2),
        "policy_logps_chosen_plus_rejected": losses,
        "max_logps_difference": max(losses.values()) - min(losses.values()),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "command": "python bench/dpo_step.py " + f"--repeats {args.repeats} --pairs {args.pairs} --max-length {args.max_length}",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
