"""Probe figures for each grid point: projection margin and restoration KL.

For the steered model of a grid point (the loaded model plus ``alpha * v`` at
one layer) over a set of prompts, at the last prompt token:

* ``projection_margin`` = mean ⟨h_point − h_ref, v̂⟩ at the final site (the
  state ``lm_head`` reads; v̂ = v/|v| of the vector file's final-site vector),
  or at the point's own site when the file has no final-site vector;
* ``restoration_kl``   = mean KL(p_ref ‖ p_point) of the next-token
  distribution, in nats.

The reference is the *base* model when the loaded model carries a PEFT adapter
(the adapter switched off: D-STEER's "does −v̄ restore the base?") and the
unsteered model otherwise.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

from dsteer_eval.probes import measures as probes
from dsteer_eval.probes import identity
from dsteer_eval.dpo.extract import last_token_states
from dsteer_eval.steering.hook import Intervention, steer


class PointProbes:
    def __init__(self, model, tokenizer, vectors: dict, num_layers: int, prompts: Sequence[str], *,
                 fallback_site: int, batch_size: int = 8) -> None:
        if not prompts:
            raise ValueError("--probe-data: no prompts to probe with")
        self.model, self.tokenizer, self.prompts, self.batch_size = model, tokenizer, list(prompts), batch_size
        final = vectors.get(num_layers)
        self.final_site = num_layers if final is not None and float(final.norm()) > 0 else None
        self.vectors, self.fallback_site = vectors, fallback_site
        self.adapter = callable(getattr(model, "disable_adapter", None))
        self.reference = "base (adapter off)" if self.adapter else "unsteered"
        with model.disable_adapter() if self.adapter else nullcontext():
            self.ref_h, self.ref_logp = self._measure([])

    def _measure(self, interventions: list[Intervention]):
        with steer(self.model, interventions):  # the recording hooks of last_token_states see the steering
            h = last_token_states(self.model, self.tokenizer, self.prompts, batch_size=self.batch_size,
                                  desc="point probes")
        logp = identity.next_token_logprobs(self.model, self.tokenizer, self.prompts, interventions=interventions,
                                          batch_size=self.batch_size)
        return h, logp

    def measure(self, interventions: list[Intervention], model_args: str) -> dict:
        h, logp = self._measure(interventions)
        site = self.final_site
        if site is None:
            site = interventions[0].site if interventions else self.fallback_site
        v = self.vectors[site].float()
        if float(v.norm()) > 0:
            projection = probes.summary((h[:, site] - self.ref_h[:, site]) @ (v / v.norm()))
        else:  # e.g. the embeddings, which a LoRA on linear layers never changes
            projection = {"mean": None, "stderr": None, "note": "v is zero at this site: no direction"}
        restoration = probes.summary(identity.kl(self.ref_logp, logp))
        return {
            "format": "dsteer-eval/point-probes",
            "model_args": model_args,
            "reference": self.reference,
            "prompts": len(self.prompts),
            "projection_margin": {**projection, "site": site},
            "restoration_kl": restoration,
        }
