"""A linear toxicity probe on a model's hidden states (Lee et al. 2024, §3: logistic regression on the last-layer
residual averaged over positions), fitted and checked on held-out rows.

* :func:`mean_states` — the mean over a text's tokens (padding excluded) of hidden-state site ``site``
  (:mod:`dsteer_eval.steering.sites`: site ``n`` = the final, post-norm state that feeds the unembedding, which
  is what transformers returns as ``hidden_states[-1]``, as GPT-2's ``ln_f`` output was in the paper).
* :func:`fit_probe` — L2-regularised logistic regression, ``p(toxic | x) = σ(w·x + b)``, fitted by L-BFGS in
  float64 on the raw states (no standardisation, so ``w`` is a direction of the state space itself and its
  cosine with a value vector means what the paper's does). The penalty is ``l2 · ‖w‖² / 2`` on the mean
  log-loss.
* :func:`score` — accuracy, balanced accuracy and the counts on rows it was not fitted on.

The labels come from whatever scorer the caller uses (offline: alt-profanity-check, which detects profanity and
insults rather than Perspective's toxicity; the paper used Jigsaw's human labels) and the probe's name says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dsteer_eval.steering.capture import record
from dsteer_eval.steering.sites import resolve_parts


@dataclass(frozen=True)
class LinearProbe:
    weight: np.ndarray  # (d,) float64: the probe direction in the state space
    bias: float
    site: int
    labels: str  # what the positive class is, e.g. "offline:alt-profanity-check >= 0.5"

    def logits(self, states: np.ndarray) -> np.ndarray:
        return states @ self.weight + self.bias

    @property
    def direction(self) -> np.ndarray:
        """The unit probe direction ``w / ‖w‖``."""
        return self.weight / np.linalg.norm(self.weight)


def mean_states(model, tokenizer, texts: list[str], *, site: int | None = None, batch_size: int = 16,
                max_length: int = 128) -> np.ndarray:
    """``(len(texts), d)`` float64: each text's mean state at ``site`` (default: the final site) over its tokens,
    padding excluded; texts longer than ``max_length`` tokens are cut to their first ``max_length``."""
    if not texts:
        raise ValueError("texts: give at least one text")
    parts = resolve_parts(model)
    site = parts.num_layers if site is None else int(site)
    if not 0 <= site <= parts.num_layers:
        raise ValueError(f"site={site}: outside 0..{parts.num_layers}")
    if max_length < 1 or batch_size < 1:
        raise ValueError("max_length and batch_size must be >= 1")
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    out = []
    try:
        with torch.no_grad(), record(model, [site], parts=parts) as seen:
            for start in range(0, len(texts), batch_size):
                enc = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True,
                                truncation=True, max_length=max_length).to(device)
                model(**enc)
                mask = enc["attention_mask"].unsqueeze(-1).to(torch.float64)
                states = seen[site].to(torch.float64)
                out.append(((states * mask).sum(1) / mask.sum(1).clamp_min(1)).cpu().numpy())
    finally:
        tokenizer.padding_side = side
    return np.concatenate(out)


def fit_probe(states: np.ndarray, labels, *, site: int, label_name: str, l2: float = 1e-3,
              max_iter: int = 500) -> LinearProbe:
    """Logistic regression of ``labels`` (0/1) on ``states`` (module docstring)."""
    x = torch.as_tensor(np.asarray(states, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"states {tuple(x.shape)} and labels {tuple(y.shape)}: need (n, d) and (n,)")
    if not set(y.unique().tolist()) <= {0.0, 1.0} or len(y.unique()) < 2:
        raise ValueError("labels: need both classes, as 0/1")
    if not l2 >= 0:
        raise ValueError(f"l2={l2}: must be >= 0")
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + 0.5 * l2 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    return LinearProbe(w.detach().numpy().copy(), float(b.detach()), int(site), label_name)


def score(probe: LinearProbe, states: np.ndarray, labels) -> dict:
    """Accuracy, balanced accuracy (mean of the two classes' recalls) and counts of ``probe`` on these rows."""
    y = np.asarray(labels).astype(int)
    pred = (probe.logits(np.asarray(states, dtype=np.float64)) > 0).astype(int)
    recalls = [float((pred[y == c] == c).mean()) for c in (0, 1) if (y == c).any()]
    return {"n": int(len(y)), "positives": int(y.sum()), "accuracy": float((pred == y).mean()),
            "balanced_accuracy": float(np.mean(recalls)) if recalls else None}


L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def choose_l2(states: np.ndarray, labels, *, site: int, label_name: str, grid=L2_GRID,
              folds: int = 5) -> tuple[float, dict]:
    """The L2 penalty of ``grid`` with the best mean balanced accuracy over ``folds`` interleaved folds of these
    rows (rows the caller holds out are never seen), and every setting's score."""
    labels = np.asarray(labels).astype(int)
    if folds < 2 or len(labels) < 2 * folds:
        raise ValueError(f"folds={folds}: need folds >= 2 and at least 2 rows per fold ({len(labels)} rows)")
    fold = np.arange(len(labels)) % folds
    found = {}
    for l2 in grid:
        accs = [score(fit_probe(states[fold != k], labels[fold != k], site=site, label_name=label_name, l2=l2),
                      states[fold == k], labels[fold == k])["balanced_accuracy"] for k in range(folds)]
        found[float(l2)] = float(np.mean(accs))
    return max(found, key=found.get), found
