"""Fig 1(b) of D-STEER: the DPO-loss gradient field on a 3-D lattice around the final hidden state.

For a batch of preference pairs, L(s) is the mean sequence-level DPO loss when one shift s is added
to every final (post-norm) hidden state of every pair's two sequences (π = the DPO side, π_ref = the
base, β from the card; the same loss as the gradient-coherence probe). The lattice is
s = r·(c₁ b₁ + c₂ b₂ + c₃ b₃), cₖ ∈ {−1, 0, 1}, with the documented basis

    b₁ = v̂ (the steering direction at ``final``),
    b₂, b₃ = the top two principal directions of the per-pair state shifts δᵢ at ``final``,
             orthogonalised against v̂ (Gram–Schmidt),

and r = the mean ‖δᵢ‖. At every lattice point the field is −∇ₛL (the direction a gradient step
would move the states). Reported: ``uniformity`` = mean cos(gₒ, ḡ) over the 27 points (ḡ the mean
field; 1 = the same push everywhere), the field's components along b₁..b₃, and a quiver PNG of the
c₃ = 0 slice projected on (b₁, b₂).

What is constant by identity and what is measured: the head is linear, so the logits at lattice
point s are exactly z + W_U·s — that shift is fixed by construction. The field is
−∇ₛL = −W_Uᵀ ∂L/∂z, which depends on s only through the softmax probabilities: it is measured, and
its uniformity across the lattice is the claim (DPO's push is the same direction wherever the state
sits nearby).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from dsteer_eval.probes.gradients import reply_batch, sequence_logps
from dsteer_eval.steering.hook import adding
from dsteer_eval.steering.sites import resolve_parts


def lattice_basis(v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(3 × d): v̂ and the top two principal directions of ``delta`` (N × d) orthogonal to v̂."""
    v = v.double() / v.double().norm()
    d = delta.double() - delta.double().mean(0)
    _, _, vh = torch.linalg.svd(d, full_matrices=False)
    basis = [v]
    for row in vh:
        w = row - sum((row @ b) * b for b in basis)
        if w.norm() > 1e-8:
            basis.append(w / w.norm())
        if len(basis) == 3:
            break
    if len(basis) < 3:
        raise ValueError("lattice_basis: the state shifts span fewer than two directions besides v̄")
    return torch.stack(basis)


def _loss_grad(pair, ids, attn, target, ref, beta: float, offset: torch.Tensor) -> torch.Tensor:
    with pair.side("dpo") as model:
        parts = resolve_parts(model)
        shift = offset.to(torch.float32).clone().requires_grad_(True)

        frozen = [(p, p.requires_grad) for p in model.parameters()]
        for p, _ in frozen:
            p.requires_grad_(False)
        try:
            with torch.enable_grad(), adding({parts.final_norm: shift}):
                pol = sequence_logps(model(input_ids=ids, attention_mask=attn).logits, ids, target)
                ratio = (pol - ref).view(-1, 2)
                loss = -torch.nn.functional.logsigmoid(beta * (ratio[:, 0] - ratio[:, 1])).mean()
                loss.backward()
        finally:
            for p, flag in frozen:
                p.requires_grad_(flag)
    return shift.grad.detach().double().cpu()


def lattice_field(pair, pairs: Sequence, v_final: torch.Tensor, delta_final: torch.Tensor, *,
                  beta: float = 0.1, max_length: int = 256) -> dict:
    """The field on the 27-point lattice (see the module docstring); ``pairs`` should be a handful."""
    basis = lattice_basis(v_final, delta_final)
    radius = float(delta_final.double().norm(dim=-1).mean())
    with pair.side("base") as model:
        device = next(model.parameters()).device
        ids, attn, target = reply_batch(pair.tokenizer, list(pairs), max_length, device)
        with torch.no_grad():
            ref = sequence_logps(model(input_ids=ids, attention_mask=attn).logits, ids, target)
    points, fields = [], []
    for c in itertools.product((-1, 0, 1), repeat=3):
        offset = radius * (torch.tensor(c, dtype=torch.float64) @ basis)
        points.append(list(c))
        fields.append(-_loss_grad(pair, ids, attn, target, ref, beta, offset.to(device)))
    g = torch.stack(fields)
    mean = g.mean(0)
    cos = torch.nn.functional.cosine_similarity(g, mean[None], dim=1)
    return {
        "basis": "b1 = v_hat (final); b2, b3 = top principal directions of delta_i at final, orthogonal to v_hat",
        "radius": radius,
        "pairs": len(pairs),
        "points": points,
        "field_in_basis": (g @ basis.T).tolist(),
        "field_norm": g.norm(dim=1).tolist(),
        "uniformity": float(cos.mean()),
        "uniformity_min": float(cos.min()),
        "cos_mean_field_with_v": float(mean @ basis[0] / mean.norm()) if mean.norm() > 0 else None,
    }


def quiver_png(field: dict, path) -> None:
    import matplotlib  # deferred: matplotlib loads only when figures are drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: matplotlib loads only when figures are drawn

    rows = [(p, f) for p, f in zip(field["points"], field["field_in_basis"]) if p[2] == 0]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.quiver([p[0] for p, _ in rows], [p[1] for p, _ in rows], [f[0] for _, f in rows], [f[1] for _, f in rows],
              angles="xy", pivot="mid", color="tab:blue")
    ax.set_xlabel(r"$\hat v$ (× r)")
    ax.set_ylabel("PC1 of δ orthogonal to v̂ (× r)")
    ax.set_title(f"−∇L on the lattice (c3 = 0); uniformity {field['uniformity']:.2f}")
    ax.set_xlim(-1.6, 1.6)
    ax.set_ylim(-1.6, 1.6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
