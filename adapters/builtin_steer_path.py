"""``steer_path=``: lm-eval's built-in steering format (a .pt dict of hookpoints, or SAE features in a .csv),
turned into ``(module, hidden -> hidden)`` edits for :func:`dsteer_eval.steering.hook.steer` with lm-eval's
own add/clamp functions, so the numbers are those of ``--model steered`` without dsteer-eval.  Every vector,
coefficient and bias is checked finite and within the model's dtype first."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from dsteer_eval.steering.hook import check_finite, check_fits_dtype
from dsteer_eval.vectors.torch_dicts import check_builtin_entry, load_builtin_pt


def read_builtin(path: Path) -> dict:
    """A ``steer_path`` file as lm-eval's built-in config dict (.pt read with weights_only; .csv by lm-eval)."""
    if path.suffix == ".csv":
        from lm_eval.models.hf_steered import SteeredModel  # deferred: lm-eval internals load only when this path runs

        return SteeredModel.derive_steer_config(str(path))
    return load_builtin_pt(path)


def builtin_edits(model, device, config: dict, alphas: tuple[float, ...], where: str = "steer_path") -> list:
    """Hooks for lm-eval's built-in format, using its own add/clamp functions."""
    from lm_eval.models.hf_steered import SteeredModel  # deferred: lm-eval internals load only when this path runs

    if len(alphas) != 1:
        raise ValueError("steer_path= takes a single alpha")
    alpha = alphas[0]
    modules = dict(model.base_model.named_modules())
    edits = []
    for hookpoint, info in config.items():
        if hookpoint not in modules:
            raise ValueError(f"steer_path hookpoint {hookpoint!r} is not a module of this model")
        entry = f"{where} hookpoint {hookpoint!r}"
        check_builtin_entry(entry, info)  # also for configs derived from a .csv
        vec = info["steering_vector"].to(device).to(model.dtype)
        check_finite(vec, f"{entry} steering_vector in {model.dtype}")
        coef = float(info.get("steering_coefficient", 1.0))
        bias = info.get("bias")
        if bias is not None:
            bias = check_finite(bias.to(device).to(model.dtype), f"{entry} bias in {model.dtype}")
        action = info.get("action", "add")
        if action == "add":
            if bias is not None:
                raise ValueError(f"steer_path hookpoint {hookpoint!r}: bias is not supported with 'add'")
            scaled = vec * coef if alpha == 1.0 else vec * coef * alpha
            check_fits_dtype(info["steering_vector"].double() * coef * alpha, model.dtype,
                             f"{entry}: alpha={alpha:g} times steering_coefficient={coef:g} times steering_vector")
            check_finite(scaled, f"{entry}: alpha={alpha:g} times steering_coefficient={coef:g} "
                                 f"times steering_vector in {model.dtype}")
            fn = partial(SteeredModel.add, vector=scaled, head_index=info.get("head_index"))
        elif action == "clamp":
            if alpha != 1.0:
                raise ValueError("alpha= does not apply to 'clamp' hookpoints; set steering_coefficient")
            direction = check_finite(vec / torch.norm(vec), f"{entry}: the clamp direction (steering_vector "
                                                              f"/ its norm) in {model.dtype}")
            fn = partial(
                SteeredModel.clamp,
                direction=direction,
                value=coef,
                bias=bias,
                head_index=info.get("head_index"),
            )
        else:
            raise ValueError(f"steer_path hookpoint {hookpoint!r}: unknown action {action!r}")
        edits.append((modules[hookpoint], fn))
    return edits
