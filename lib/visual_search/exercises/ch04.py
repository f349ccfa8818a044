"""Checks for chapter 04, softmax, cross-entropy and SimCLR: the loss one step at a time.

Each check runs the answer on small random tensors and compares it with the library
(``contrastive.softmax_cross_entropy``, ``contrastive.nt_xent``) or with torch itself
(``torch.softmax``, ``F.cross_entropy``), within float tolerance. Some cases use a tiny
temperature on purpose: a softmax that calls ``exp`` on the raw logits overflows there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from visual_search.contrastive import nt_xent as library_nt_xent
from visual_search.contrastive import softmax_cross_entropy
from visual_search.exercises._core import call, checker, expect_close


def _value(x: object) -> object:
    """A tensor answer as a numpy array (detached), anything else unchanged."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


def _torch_rng(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(2**31)))


@checker
def softmax(answer: Callable[[torch.Tensor, float], torch.Tensor], rng: np.random.Generator) -> int:
    """``answer(similarities, temperature)`` -> each row's softmax of ``similarities / temperature``."""
    gen = _torch_rng(rng)
    for i in range(8):
        rows, n = int(rng.integers(1, 5)), int(rng.integers(2, 9))
        temperature = float(rng.choice([1.0, 0.5, 0.2, 0.1])) if i < 5 else float(rng.choice([0.01, 0.005]))
        sims = torch.rand(rows, n, generator=gen) * 2 - 1  # cosines in [-1, 1]
        case = f"case {i + 1} ({rows} x {n} similarities, temperature {temperature:g})"
        want = torch.softmax(sims / temperature, dim=1)
        expect_close(_value(call(answer, sims.clone(), temperature, case=case)), want.numpy(), case,
                     "divide by the temperature, then exp and divide by each row's sum (dim=1). With a tiny "
                     "temperature exp overflows to inf: subtract each row's largest logit first, which changes nothing else",
                     rtol=1e-4, atol=1e-6)
    return 8


@checker
def cross_entropy(answer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], rng: np.random.Generator) -> int:
    """``answer(logits, labels)`` -> the mean over rows of ``-log softmax(logits)[label]``."""
    gen = _torch_rng(rng)
    for i in range(8):
        rows, n = int(rng.integers(1, 6)), int(rng.integers(2, 9))
        scale = 3.0 if i < 5 else 200.0  # the last cases: logits as large as a cosine over a temperature of 0.005
        logits = (torch.rand(rows, n, generator=gen) * 2 - 1) * scale
        labels = torch.randint(0, n, (rows,), generator=gen)
        case = f"case {i + 1} ({rows} rows of {n} logits in [-{scale:g}, {scale:g}], labels {labels.tolist()})"
        want = F.cross_entropy(logits, labels)
        expect_close(_value(call(answer, logits.clone(), labels.clone(), case=case)), want.item(), case,
                     "return one number, the mean over the rows (not the sum). log p_y = z_y - logsumexp(z): "
                     "torch.logsumexp(logits, dim=1) stays finite where log(exp(z).sum()) overflows",
                     rtol=1e-4, atol=1e-5)
    return 8


@checker
def info_nce(answer: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor], rng: np.random.Generator) -> int:
    """``answer(query, candidates, labels, temperature)`` -> the cosine softmax loss of a batch of data points."""
    gen = _torch_rng(rng)
    for i in range(8):
        batch, n, dim = int(rng.integers(1, 5)), int(rng.integers(2, 9)), int(rng.integers(2, 9))
        temperature = float(rng.choice([1.0, 0.5, 0.2, 0.1, 0.05]))
        scale = float(rng.choice([1.0, 3.0]))  # not unit length: the answer must normalise
        query = torch.randn(batch, dim, generator=gen) * scale
        candidates = torch.randn(batch, n, dim, generator=gen) * scale
        labels = torch.randint(0, n, (batch,), generator=gen)
        case = f"case {i + 1} (B={batch}, n={n}, D={dim}, temperature {temperature:g}, labels {labels.tolist()})"
        want = softmax_cross_entropy(query, candidates, labels, kind="cosine", temperature=temperature)
        expect_close(_value(call(answer, query.clone(), candidates.clone(), labels.clone(), temperature, case=case)), want.item(), case,
                     "normalise the query [B, D] and each candidate [B, n, D] (F.normalize(..., dim=-1)), take the [B, n] "
                     "dot products (torch.einsum('bd,bnd->bn', ...)), divide by the temperature, then cross-entropy "
                     "with the labels, averaged over the batch",
                     rtol=1e-4, atol=1e-5)
    return 8


@checker
def nt_xent(answer: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor], rng: np.random.Generator) -> int:
    """``answer(z1, z2, temperature)`` -> SimCLR's NT-Xent over the 2N views."""
    gen = _torch_rng(rng)
    for i in range(8):
        n_images, dim = int(rng.integers(2, 7)), int(rng.integers(2, 9))
        temperature = float(rng.choice([1.0, 0.5, 0.2, 0.1]))
        z1 = torch.randn(n_images, dim, generator=gen)
        z2 = z1 + 0.5 * torch.randn(n_images, dim, generator=gen)  # twins are alike, as two views should be
        case = f"case {i + 1} (N={n_images} images, so 2N={2 * n_images} views, D={dim}, temperature {temperature:g})"
        want = library_nt_xent(z1, z2, temperature)
        expect_close(_value(call(answer, z1.clone(), z2.clone(), temperature, case=case)), want.item(), case,
                     "stack the 2N unit-length views, take the [2N, 2N] cosine matrix / temperature, set the diagonal to "
                     "-inf (a view is not its own candidate), and use cross-entropy with targets i -> i + N and i + N -> i, "
                     "averaged over all 2N anchors",
                     rtol=1e-4, atol=1e-5)
    return 8


def _library_range(n: int, temperature: float) -> tuple[float, float]:
    """The library's loss on the two extreme embeddings: all candidates alike, and the best separation."""
    e = torch.zeros(1, 3, dtype=torch.float64)
    e[0, 0] = 1.0
    label = torch.zeros(1, dtype=torch.int64)
    uniform = softmax_cross_entropy(e, e[:, None, :].repeat(1, n, 1), label, temperature=temperature).item()
    best = torch.cat([e[:, None, :], (-e)[:, None, :].repeat(1, n - 1, 1)], dim=1)  # positive at +1, negatives at -1
    floor = softmax_cross_entropy(e, best, label, temperature=temperature).item()
    return uniform, floor


@checker
def loss_range(answer: Callable[[int, float], tuple[float, float]], rng: np.random.Generator) -> int:
    """``answer(n, temperature)`` -> (the loss of a uniform guess, the lowest loss cosine similarities allow)."""
    settings = [(4, 1.0), (4096, 1.0), (255, 0.2)]
    for _ in range(5):
        settings.append((int(rng.choice([2, 8, 64, 511, 4096])), float(rng.choice([2.0, 1.0, 0.5, 0.2, 0.1]))))
    for i, (n, temperature) in enumerate(settings):
        case = f"case {i + 1} (n={n} candidates, temperature {temperature:g})"
        got = call(answer, n, temperature, case=case)
        uniform, floor = _library_range(n, temperature)
        assert math.isclose(floor, math.log1p((n - 1) * math.exp(-2 / temperature)), rel_tol=1e-9, abs_tol=1e-12)
        expect_close(got, np.array([uniform, floor]), case,
                     "a uniform guess gives every candidate 1/n, so the loss is log(n); the best case puts the positive "
                     "at cosine +1 and every negative at -1, so -log p_y = log(1 + (n - 1) exp(-2 / temperature))",
                     rtol=1e-6, atol=1e-9)
    return len(settings)
