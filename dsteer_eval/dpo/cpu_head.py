"""A CPU-friendly LM head for trl's DPOTrainer (same outputs, a fraction of the time).

trl 1.16 patches the policy's ``forward`` so that ``fused_lm_head=True`` returns
per-token log-probabilities (:class:`trl.trainer.utils.FusedCausalLMOutput`)
computed by its chunked log-prob kernel.  On CUDA/XPU that kernel is Triton and
scores only the completion tokens.  Elsewhere it falls back to torch tile ops
that score *every* position (prompt and padding included) in 32k-vocabulary
tiles with several full-size fp32 temporaries per tile, forward and backward.
On a CPU that is about twice the cost of one plain ``log_softmax`` over the
same rows, and it is paid for prompt tokens whose results are thrown away.

:func:`use_compact_head` re-patches the model so that ``fused_lm_head=True``
projects only the positions with a label (the completion tokens) through the
LM head and takes one ``log_softmax`` there.  It returns the same fields with
the same meaning (see ``tests/dpo/test_dpo_training.py``, which checks them against
trl's kernel), so DPOTrainer's loss, rewards and logged metrics are unchanged.
Models that scale or soft-cap their logits keep trl's head.
"""

from __future__ import annotations

import types

import torch

_SCALING_ATTRS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def supports_compact_head(model) -> bool:
    """Whether the model's logits are a plain ``lm_head(h)`` (no scaling or soft-capping)."""
    cfg = model.config.get_text_config()
    return all(getattr(cfg, name, None) in (None, 1.0) for name in _SCALING_ATTRS)


def use_compact_head(model) -> bool:
    """Replace trl's fused LM head on ``model`` (the policy or reference model, not a PEFT wrapper).

    Must be called after DPOTrainer has added its head.  Returns ``False`` (and
    changes nothing) where the compact head does not apply.
    """
    from trl.trainer.utils import FusedCausalLMOutput  # deferred: trl loads only when training

    trl_forward = model.forward
    if not supports_compact_head(model) or not isinstance(trl_forward, types.MethodType):
        return False

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if (not fused_lm_head or shift_labels is not None or labels is None
                or kwargs.get("output_router_logits")):
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        labels = labels[:, 1:].to(hidden.device)
        mask = labels != -100
        targets = labels[mask]
        lm_head = self.get_output_embeddings()
        logits = lm_head(hidden[mask]).float()  # (completion tokens, vocab)
        log_softmax = logits.log_softmax(-1)
        token_logp = log_softmax.gather(-1, targets[:, None]).squeeze(-1)
        with torch.no_grad():
            entropy = -(log_softmax.exp() * log_softmax).sum(-1)
            mean_logits = logits.mean(-1)
            is_top1 = logits.argmax(-1) == targets

        def spread(values):
            return values.new_zeros(mask.shape).masked_scatter(mask, values)

        log_probs = spread(token_logp)
        denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / denominator,
            log_probs=log_probs,
            entropy=spread(entropy),
            log_sum_sq_probs=None,
            mean_logits=spread(mean_logits),
            is_top1=spread(is_top1),
            label_mask=mask,
            aux_loss=None,
        )

    model.forward = types.MethodType(forward, model)
    return True
