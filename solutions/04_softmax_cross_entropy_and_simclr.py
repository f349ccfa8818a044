"""Solutions to chapter 04's checked exercises (notebooks/04_softmax_cross_entropy_and_simclr.ipynb).

Each function has the name and signature of the notebook's stub; ``tests/test_exercises.py``
feeds it to ``check.ch04.<name>``. Try the exercise before reading on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def softmax(similarities: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row-wise softmax of similarities / temperature, stable: the row's largest logit is subtracted first."""
    logits = similarities / temperature
    shifted = logits - logits.max(dim=1, keepdim=True).values  # exp(shifted) <= 1: no overflow
    exps = torch.exp(shifted)
    return exps / exps.sum(dim=1, keepdim=True)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of -log p_y, with log p_y = z_y - logsumexp(z)."""
    log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -log_probs[torch.arange(len(labels)), labels].mean()


def info_nce(query: torch.Tensor, candidates: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine similarities of each query with its n candidates, over the temperature, then cross-entropy."""
    q, c = F.normalize(query, dim=-1), F.normalize(candidates, dim=-1)
    logits = torch.einsum("bd,bnd->bn", q, c) / temperature
    return cross_entropy(logits, labels)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Every one of the 2N views is an anchor; its twin is the positive, the other 2N - 2 views the negatives."""
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return cross_entropy(logits, targets)


def loss_range(n: int, temperature: float) -> tuple[float, float]:
    """(log n for a uniform guess, log(1 + (n - 1) exp(-2 / temperature)) for the best cosine embedding)."""
    return math.log(n), math.log1p((n - 1) * math.exp(-2.0 / temperature))
