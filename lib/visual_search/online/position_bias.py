"""Position bias: the position-based click model, two estimators of its curve, and IPS weights.

Users click what they look at, and they look at the top of a list far more than at
the bottom. The position-based model (PBM) writes that down::

    P(click | rank r, item d) = theta_r * gamma_d

``theta_r`` is the examination propensity of rank ``r`` (the chance a user looks at
that slot at all; ``theta_1`` is normalised to 1) and ``gamma_d`` the item's
attractiveness for the query (the chance they click it once seen). Clicks therefore
confound the two: the production ranker puts its best items on top, so the naive
click rate per rank, ``CTR_r / CTR_1 = theta_r gamma_r / (theta_1 gamma_1)``, falls
faster than ``theta`` does (``naive_theta`` computes it, as the wrong baseline).

Two estimators separate them, written by hand because they are the lesson:

* ``estimate_theta_swap``, the swap intervention (Joachims et al. 2017, "Unbiased
  learning-to-rank with biased feedback"; Wang et al. 2016's RandPair): in a small
  random share of impressions two results are swapped. The same two items are then
  seen at both ranks, in both orders, so their relevance cancels from the ratio of
  click rates and what is left is ``theta_b / theta_a``.
* ``estimate_theta_em``, regression-EM (Wang et al. 2018, "Position bias estimation
  for unbiased learning to rank in personal search"): EM over the latent "examined"
  and "relevant" variables of each impression, with one relevance per item key (a
  query-item pair, or a relevance-grade bucket). It needs no intervention, only that
  items are seen at more than one rank, and it uses every row of the log, not just
  the swapped ones.

``simulate_pbm_log`` draws seeded logs from a known ``theta``, with or without the
swap intervention, so the tests can check both estimators against the truth;
``ips_weights`` turns an estimated curve into the clipped inverse-propensity weights
that make click-trained losses unbiased.

Every bad input raises ``OnlineError`` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from visual_search._checks import check_int, check_real, check_seed
from visual_search.errors import OnlineError

#: The two swap designs: ``"first"`` swaps rank 1 with rank k; ``"adjacent"`` swaps k - 1 with k.
SWAP_MODES = ("first", "adjacent")

# ---- checks -------------------------------------------------------------------------------


def _int_array(values: object, name: str) -> np.ndarray:
    """A 1-D int64 array from ``values``: integers, bools, or integral floats (no NaN, no inf)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise OnlineError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise OnlineError(f"{name} contains NaN or inf (at index {int(np.flatnonzero(~np.isfinite(arr))[0])})")
        if np.any(arr != np.round(arr)):
            raise OnlineError(f"{name} must hold integers, got {arr[arr != np.round(arr)][0]!r}")
    elif arr.dtype.kind not in "biu":
        raise OnlineError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _log_arrays(ranks: object, clicked: object, **others: object) -> tuple[np.ndarray, ...]:
    """Validate the columns of a click log: equal lengths, ranks >= 1, clicked in {0, 1}."""
    ranks = _int_array(ranks, "ranks")
    clicked = _int_array(clicked, "clicked")
    if len(ranks) == 0:
        raise OnlineError("ranks is empty: the log has no rows")
    if len(clicked) != len(ranks):
        raise OnlineError(f"clicked has {len(clicked)} rows but ranks has {len(ranks)}")
    if ranks.min() < 1:
        raise OnlineError(f"ranks must be >= 1 (rank 1 is the top), got {int(ranks.min())}")
    bad = (clicked != 0) & (clicked != 1)
    if bad.any():
        raise OnlineError(f"clicked must be 0 or 1, got {int(clicked[bad][0])} at index {int(np.flatnonzero(bad)[0])}")
    out = [ranks, clicked]
    for name, values in others.items():
        arr = _int_array(values, name)
        if len(arr) != len(ranks):
            raise OnlineError(f"{name} has {len(arr)} rows but ranks has {len(ranks)}")
        out.append(arr)
    return tuple(out)


def _n_ranks(n_ranks: int | None, ranks: np.ndarray) -> int:
    """How many ranks to estimate: given, or the deepest rank in the log; rows deeper are dropped by the caller."""
    if n_ranks is None:
        return int(ranks.max())
    return check_int(n_ranks, "n_ranks", low=2, error=OnlineError)


def _theta_array(theta: object, name: str = "theta") -> np.ndarray:
    arr = np.asarray(theta, dtype=float) if not isinstance(theta, np.ndarray) else theta.astype(float)
    if arr.ndim != 1 or len(arr) == 0:
        raise OnlineError(f"{name} must be a non-empty 1-D array (theta[r - 1] is rank r's propensity), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0) or np.any(arr > 1):
        raise OnlineError(f"{name} must hold finite propensities in (0, 1], got {arr!r}")
    return arr


# ---- the curves ---------------------------------------------------------------------------


def power_law_theta(n_ranks: int = 10, eta: float = 1.0) -> np.ndarray:
    """The usual synthetic examination curve ``theta_r = 1 / r**eta`` for ranks 1..n_ranks.

    Args:
        n_ranks: how many ranks (>= 1).
        eta: the severity of the bias (>= 0); 0 is no bias, 1 is the common choice,
            larger falls faster (Joachims et al. 2017 simulate with eta in [0, 2]).

    Returns:
        ``theta`` as a float array, ``theta[r - 1]`` for rank ``r``; ``theta[0] == 1``.
    """
    n_ranks = check_int(n_ranks, "n_ranks", low=1, error=OnlineError)
    eta = check_real(eta, "eta", low=0.0, error=OnlineError)
    return 1.0 / np.arange(1, n_ranks + 1, dtype=float) ** eta


def naive_theta(ranks: object, clicked: object, n_ranks: int | None = None) -> np.ndarray:
    """The biased baseline: each rank's click rate divided by rank 1's.

    Under the PBM this is ``theta_r E[gamma at r] / (theta_1 E[gamma at 1])``, so it is
    right only when every rank shows equally attractive items (a random ranking). A
    ranker that works puts its best items on top, and then the naive curve falls too
    fast: it blames the rank for what is the item's doing.

    Args:
        ranks: rank of each row (1 = top).
        clicked: 0/1 per row.
        n_ranks: ranks 1..n_ranks to report (default: the deepest in the log); deeper rows are ignored.

    Returns:
        ``CTR_r / CTR_1`` for r = 1..n_ranks (``[0]`` is 1).
    """
    ranks, clicked = _log_arrays(ranks, clicked)
    n_ranks = _n_ranks(n_ranks, ranks)
    keep = ranks <= n_ranks
    shown = np.bincount(ranks[keep] - 1, minlength=n_ranks)
    clicks = np.bincount(ranks[keep] - 1, weights=clicked[keep], minlength=n_ranks)
    if np.any(shown == 0):
        raise OnlineError(f"rank {int(np.flatnonzero(shown == 0)[0]) + 1} has no rows in the log")
    if clicks[0] == 0:
        raise OnlineError("rank 1 has no clicks: the curve cannot be normalised to it")
    ctr = clicks / shown
    return ctr / ctr[0]


# ---- simulation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClickLog:
    """A simulated click log, one row per (impression, rank).

    Attributes:
        impression: the impression (result page) each row belongs to, 0..n_impressions-1.
        query: the query of the impression.
        key: the item shown, as ``query * n_ranks + its production position - 1``
            (a query-item key, what ``estimate_theta_em`` wants).
        rank: where it was shown (1 = top).
        clicked: 0/1.
        swap: the impression's intervention: 0 for the production order, ``k`` for an
            impression with ranks ``(1, k)`` swapped (mode ``"first"``) or ``(k - 1, k)``
            (mode ``"adjacent"``); what ``estimate_theta_swap`` wants.
        mode: the swap design, ``"first"`` or ``"adjacent"``.
    """

    impression: np.ndarray
    query: np.ndarray
    key: np.ndarray
    rank: np.ndarray
    clicked: np.ndarray
    swap: np.ndarray
    mode: str


def _mode(mode: object) -> str:
    if mode not in SWAP_MODES:
        raise OnlineError(f"mode must be one of {SWAP_MODES}, got {mode!r}")
    return mode


def _pair(k: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """The two ranks (a, b), a < b, that intervention ``k`` swaps."""
    return (np.ones_like(k), k) if mode == "first" else (k - 1, k)


def simulate_pbm_log(
    theta: object,
    attractiveness: object,
    n_impressions: int,
    swap_rate: float = 0.0,
    mode: str = "first",
    seed: int = 0,
) -> ClickLog:
    """Draw a click log from the position-based model, optionally with the swap intervention.

    Each impression picks a query uniformly and shows its items in production order
    (column ``j`` of ``attractiveness`` at rank ``j + 1``). With probability
    ``swap_rate`` the impression is an intervention instead: a ``k`` is drawn
    uniformly from 2..R and ranks ``(1, k)`` (mode ``"first"``) or ``(k - 1, k)``
    (``"adjacent"``) are swapped. Each row is then clicked with probability
    ``theta[rank - 1] * attractiveness[query, item]``, independently.

    Args:
        theta: the true examination curve, ``theta[r - 1]`` for rank r, values in (0, 1].
        attractiveness: ``(n_queries, R)`` click-once-seen probabilities in [0, 1], in
            production order; R = ``len(theta)``. Sort each row in decreasing order to
            model a ranker that works (which is what biases ``naive_theta``).
        n_impressions: how many result pages (>= 1).
        swap_rate: the share of impressions that are swap interventions, in [0, 1].
        mode: ``"first"`` or ``"adjacent"``.
        seed: the random seed; the same seed gives the same log.

    Returns:
        A ``ClickLog`` of ``n_impressions * R`` rows.
    """
    theta = _theta_array(theta)
    gamma = np.asarray(attractiveness, dtype=float)
    n_ranks = len(theta)
    if n_ranks < 2:
        raise OnlineError(f"theta must cover at least 2 ranks, got {n_ranks}")
    if gamma.ndim != 2 or gamma.shape[1] != n_ranks or gamma.shape[0] < 1:
        raise OnlineError(f"attractiveness must have shape (n_queries, {n_ranks}) to match theta, got {gamma.shape}")
    if not np.all(np.isfinite(gamma)) or np.any(gamma < 0) or np.any(gamma > 1):
        raise OnlineError("attractiveness must hold probabilities in [0, 1] (no NaN)")
    n = check_int(n_impressions, "n_impressions", low=1, error=OnlineError)
    swap_rate = check_real(swap_rate, "swap_rate", low=0.0, high=1.0, error=OnlineError)
    mode = _mode(mode)
    rng = np.random.default_rng(check_seed(seed, error=OnlineError))

    query = rng.integers(0, gamma.shape[0], size=n)
    k = np.where(rng.random(n) < swap_rate, rng.integers(2, n_ranks + 1, size=n), 0)
    position = np.tile(np.arange(n_ranks), (n, 1))  # position[i, r - 1]: production position of the item at rank r
    rows = np.flatnonzero(k)
    a, b = _pair(k[rows], mode)
    position[rows, a - 1], position[rows, b - 1] = b - 1, a - 1
    p = theta[None, :] * gamma[query[:, None], position]
    clicked = (rng.random((n, n_ranks)) < p).astype(np.int64)
    return ClickLog(
        impression=np.repeat(np.arange(n), n_ranks),
        query=np.repeat(query, n_ranks),
        key=(query[:, None] * n_ranks + position).ravel(),
        rank=np.tile(np.arange(1, n_ranks + 1), n),
        clicked=clicked.ravel(),
        swap=np.repeat(k, n_ranks),
        mode=mode,
    )


# ---- the swap intervention ----------------------------------------------------------------


@dataclass(frozen=True)
class SwapEstimate:
    """``theta`` from a swap-intervention log.

    Attributes:
        theta: the estimated curve, ``theta[r - 1]`` for rank r, ``theta[0] == 1``.
        ratios: the measured ratio of each intervention, ``ratios[k - 2] = theta_b / theta_a``
            for the pair (a, b) that intervention k swaps (for mode ``"first"`` these are
            ``theta[1:]`` themselves; for ``"adjacent"``, their cumulative product is).
        impressions: swapped impressions behind each ratio, ``impressions[k - 2]`` for k.
        mode: ``"first"`` or ``"adjacent"``.
    """

    theta: np.ndarray
    ratios: np.ndarray
    impressions: np.ndarray
    mode: str


def estimate_theta_swap(
    ranks: object,
    clicked: object,
    swap: object,
    mode: str = "first",
    n_ranks: int | None = None,
    min_impressions: int = 100,
) -> SwapEstimate:
    """Estimate ``theta`` from randomised swaps of two results (RandPair / swap intervention).

    Intervention k swaps ranks (a, b): (1, k) in mode ``"first"``, (k - 1, k) in
    ``"adjacent"``. Call x the item production puts at a and y the one at b. In the
    production order, rank a shows x and rank b shows y; in the swapped order the other
    way round. Under the PBM the expected click rates are::

        production:  CTR_a = theta_a gamma_x     CTR_b = theta_b gamma_y
        swapped:     CTR_a = theta_a gamma_y     CTR_b = theta_b gamma_x

    so ``(CTR_b^prod + CTR_b^swap) / (CTR_a^prod + CTR_a^swap) = theta_b / theta_a``:
    both ranks saw the same two items once each, and relevance cancels, averaged over
    whatever queries the log holds, because the swap was assigned at random. It uses
    both items of the pair (Joachims et al. compare only the top item's clicks at
    rank 1 and rank k, which is unbiased too but wastes half the swapped clicks), and
    it needs no item ids: ranks, clicks and the intervention label are enough.

    The variance trade-off between the designs: ``"first"`` measures each ``theta_k``
    directly, but swapping a deep result to the top is a visible degradation for the
    user, and its ratio rests on the few clicks at rank k. ``"adjacent"`` swaps are
    nearly harmless to the user and each ratio ``theta_k / theta_{k-1}`` compares two
    similar ranks, but ``theta_k`` is a product of k - 1 ratios, so their errors
    compound down the list: deep ranks are estimated worse. The production-order rates
    come from the (large) control share, so nearly all the variance is in the swapped
    share: budget ``min_impressions`` or more swapped impressions per k.

    Args:
        ranks: rank of each row (1 = top); each impression has one row per rank shown.
        clicked: 0/1 per row.
        swap: the row's impression's intervention: 0 for production order, k in 2..R for a swap.
        mode: ``"first"`` or ``"adjacent"``, as the log was made.
        n_ranks: ranks 1..n_ranks to estimate (default: the deepest in the log); deeper rows are ignored.
        min_impressions: the fewest swapped impressions each k must have (>= 1); fewer is an error,
            because the ratio of a handful of clicks is noise.

    Returns:
        A ``SwapEstimate``.
    """
    ranks, clicked, swap = _log_arrays(ranks, clicked, swap=swap)
    mode = _mode(mode)
    n_ranks = _n_ranks(n_ranks, ranks)
    min_impressions = check_int(min_impressions, "min_impressions", low=1, error=OnlineError)
    if swap.min() < 0 or swap.max() > n_ranks or np.any(swap == 1):
        bad = swap[(swap < 0) | (swap > n_ranks) | (swap == 1)][0]
        raise OnlineError(f"swap must be 0 (production order) or k in 2..{n_ranks}, got {int(bad)}")
    keep = ranks <= n_ranks
    ranks, clicked, swap = ranks[keep], clicked[keep], swap[keep]
    # shown[g, r - 1] and clicks[g, r - 1]: rows and clicks at rank r in group g (0 = production, k = swap k)
    cell = swap * n_ranks + ranks - 1
    size = (n_ranks + 1) * n_ranks
    shown = np.bincount(cell, minlength=size).reshape(n_ranks + 1, n_ranks)
    clicks = np.bincount(cell, weights=clicked, minlength=size).reshape(n_ranks + 1, n_ranks)
    k = np.arange(2, n_ranks + 1)
    a, b = _pair(k, mode)
    n_prod = shown[0, [a - 1, b - 1]].min(axis=0)
    n_swap = shown[k, b - 1]  # every swapped impression shows rank b
    for name, counts in (("production-order", n_prod), ("swapped", n_swap)):
        short = np.flatnonzero(counts < min_impressions)
        if len(short):
            j = short[0]
            raise OnlineError(
                f"rank {int(b[j])} has {int(counts[j])} {name} impressions for the swap of ranks ({int(a[j])}, {int(b[j])});"
                f" min_impressions is {min_impressions}"
            )
    with np.errstate(divide="ignore", invalid="ignore"):
        ctr_prod = clicks[0] / shown[0]
        ctr_swap_a = clicks[k, a - 1] / shown[k, a - 1]
        ctr_swap_b = clicks[k, b - 1] / n_swap
    denominator = ctr_prod[a - 1] + ctr_swap_a
    if np.any(denominator == 0):
        j = int(np.flatnonzero(denominator == 0)[0])
        raise OnlineError(f"rank {int(a[j])} has no clicks in the swap of ranks ({int(a[j])}, {int(b[j])}): the ratio is undefined")
    ratios = (ctr_prod[b - 1] + ctr_swap_b) / denominator
    theta = np.concatenate([[1.0], ratios if mode == "first" else np.cumprod(ratios)])
    return SwapEstimate(theta=theta, ratios=ratios, impressions=n_swap.astype(np.int64), mode=mode)


# ---- regression-EM ------------------------------------------------------------------------


@dataclass(frozen=True)
class EMEstimate:
    """``theta`` and per-key relevance from EM on a click log.

    Attributes:
        theta: the estimated curve, ``theta[r - 1]`` for rank r, normalised so ``theta[0] == 1``.
        keys: the distinct item keys of the log, sorted.
        gamma: each key's attractiveness on the same scale (``gamma * theta`` is the fitted
            click probability; scaled by the raw ``theta_1``, so it can exceed 1 when the
            fitted top-rank propensity is below 1).
        log_likelihood: the data's log-likelihood before the first iteration and after each
            (length ``n_iter + 1``); EM never lets it decrease.
        n_iter: iterations run.
        converged: whether the largest change of ``theta`` fell below ``tol`` before ``max_iter``
            (EM's steps shrink as it converges, so a small step is not proof of being at the optimum).
    """

    theta: np.ndarray
    keys: np.ndarray
    gamma: np.ndarray
    log_likelihood: np.ndarray
    n_iter: int
    converged: bool


def _pbm_log_likelihood(n: np.ndarray, c: np.ndarray, p: np.ndarray) -> float:
    """``sum c log p + (n - c) log(1 - p)`` over cells, with 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ll = np.where(c > 0, c * np.log(p), 0.0) + np.where(n - c > 0, (n - c) * np.log1p(-p), 0.0)
    return float(ll.sum())


def estimate_theta_em(
    ranks: object,
    clicked: object,
    keys: object,
    n_ranks: int | None = None,
    tol: float = 1e-6,
    max_iter: int = 2000,
    min_rows_per_rank: int = 100,
) -> EMEstimate:
    """Estimate ``theta`` (and one relevance per key) by EM on the position-based model.

    Every row hides two coin flips: examined (E, probability ``theta_r``) and relevant
    (R, probability ``gamma_d``); the click is ``E and R``. A click says both were 1.
    A skip says one of them was 0, and the E-step splits it by Bayes' rule::

        P(E = 1 | no click) = theta_r (1 - gamma_d) / (1 - theta_r gamma_d)
        P(R = 1 | no click) = (1 - theta_r) gamma_d / (1 - theta_r gamma_d)

    The M-step sets each parameter to the expected share of ones among its rows::

        theta_r = (clicks at r + sum over skips at r of P(E = 1 | skip)) / rows at r
        gamma_d = (clicks on d + sum over skips of d of P(R = 1 | skip)) / rows of d

    Each iteration cannot lower the log-likelihood ``sum c log(theta gamma) + (1 - c)
    log(1 - theta gamma)`` (the EM guarantee); it stops when no ``theta_r`` moves more
    than ``tol`` on the ``theta_1 = 1`` scale. Rows with the same (key, rank) share their posterior, so the
    iterations run on those cells' counts, not on the rows. Wang et al. (2018) fit
    ``gamma`` with a regression on features (hence "regression-EM"), so that keys seen
    once still share strength; here each key has its own ``gamma`` (pass a grade bucket
    as the key to get their coarser variant).

    The likelihood only sees ``theta_r gamma_d``, so ``theta`` is found up to scale
    (it is returned with ``theta_1 = 1``), and only where keys link the ranks: a key
    seen at ranks 1 and 3 ties ``theta_3`` to ``theta_1``. If every item always sits at
    the same rank (no intervention, no ranking change), nothing separates rank from
    relevance, and this raises rather than return an arbitrary curve.

    Args:
        ranks: rank of each row (1 = top).
        clicked: 0/1 per row.
        keys: the item of each row, an integer key (a query-item pair, or a relevance group).
        n_ranks: ranks 1..n_ranks to estimate (default: the deepest in the log); deeper rows are ignored.
        tol: stop when no ``theta_r`` (on the ``theta_1 = 1`` scale) moves more than this
            between two iterations (> 0).
        max_iter: the most iterations (>= 1).
        min_rows_per_rank: the fewest rows each rank must have (>= 1).

    Returns:
        An ``EMEstimate``.
    """
    ranks, clicked, keys = _log_arrays(ranks, clicked, keys=keys)
    n_ranks = _n_ranks(n_ranks, ranks)
    tol = check_real(tol, "tol", low=0.0, low_open=True, error=OnlineError)
    max_iter = check_int(max_iter, "max_iter", low=1, error=OnlineError)
    min_rows = check_int(min_rows_per_rank, "min_rows_per_rank", low=1, error=OnlineError)
    keep = ranks <= n_ranks
    ranks, clicked, keys = ranks[keep], clicked[keep], keys[keep]
    per_rank = np.bincount(ranks - 1, minlength=n_ranks)
    short = np.flatnonzero(per_rank < min_rows)
    if len(short):
        raise OnlineError(f"rank {int(short[0]) + 1} has {int(per_rank[short[0]])} rows; min_rows_per_rank is {min_rows}")

    # the sufficient statistics: rows n and clicks c per (key, rank) cell
    unique_keys, key_index = np.unique(keys, return_inverse=True)
    cells, cell_index = np.unique(key_index * n_ranks + ranks - 1, return_inverse=True)
    n = np.bincount(cell_index).astype(float)
    c = np.bincount(cell_index, weights=clicked)
    cell_key, cell_rank = cells // n_ranks, cells % n_ranks
    n_keys = len(unique_keys)

    graph = coo_matrix((np.ones(len(cells)), (cell_rank, n_ranks + cell_key)), shape=(n_ranks + n_keys,) * 2)
    _, component = connected_components(graph, directed=False)
    unlinked = np.flatnonzero(component[:n_ranks] != component[0])
    if len(unlinked):
        raise OnlineError(
            f"rank {int(unlinked[0]) + 1} shares no items (directly or through other ranks) with rank 1:"
            " theta is not identifiable from this log; swap or reshuffle some results"
        )

    rows_per_rank = np.bincount(cell_rank, weights=n, minlength=n_ranks)
    rows_per_key = np.bincount(cell_key, weights=n, minlength=n_keys)
    theta = np.full(n_ranks, 0.5)
    gamma = np.full(n_keys, 0.5)
    history = [_pbm_log_likelihood(n, c, theta[cell_rank] * gamma[cell_key])]
    converged = False
    n_iter = 0
    while n_iter < max_iter:
        t, g = theta[cell_rank], gamma[cell_key]
        skip = n - c
        denominator = 1.0 - t * g
        safe = np.where(denominator > 0, denominator, 1.0)  # 1 - tg = 0 only where p = 1, and then no skips
        examined = c + skip * np.where(denominator > 0, t * (1.0 - g) / safe, 0.0)
        relevant = c + skip * np.where(denominator > 0, (1.0 - t) * g / safe, 0.0)
        new_theta = np.bincount(cell_rank, weights=examined, minlength=n_ranks) / rows_per_rank
        new_gamma = np.bincount(cell_key, weights=relevant, minlength=n_keys) / rows_per_key
        # theta on the identifiable scale (theta_1 = 1): EM also drifts along the flat ridge
        # (c theta, gamma / c), which changes nothing the data can see; and gamma is left
        # out, because the gamma of a key never clicked creeps to 0 like 1 / iteration
        change = np.abs(new_theta / new_theta[0] - theta / theta[0]).max()
        theta, gamma = new_theta, new_gamma
        n_iter += 1
        history.append(_pbm_log_likelihood(n, c, theta[cell_rank] * gamma[cell_key]))
        if change < tol:
            converged = True
            break
    if theta[0] <= 0:
        raise OnlineError("rank 1 has no clicks: the curve cannot be normalised to it")
    return EMEstimate(
        theta=theta / theta[0],
        keys=unique_keys,
        gamma=gamma * theta[0],
        log_likelihood=np.array(history),
        n_iter=n_iter,
        converged=converged,
    )


# ---- inverse propensity weights -----------------------------------------------------------


def ips_weights(ranks: object, theta: object, max_weight: float = 10.0) -> np.ndarray:
    """Inverse-propensity weights ``min(1 / theta_rank, max_weight)`` for clicks at ``ranks``.

    A click at rank r was only possible because the user examined rank r, which
    happens with probability ``theta_r``; weighting each click by ``1 / theta_r`` makes
    a sum over clicks an unbiased estimate of the sum over relevant items, as if every
    rank had been examined (Joachims et al. 2017). Deep ranks have tiny ``theta`` and
    rare clicks, so a few of them would get huge weights and dominate the loss: the
    clip at ``max_weight`` trades a little bias at those ranks for bounded variance.

    Args:
        ranks: the rank of each click (1 = top), each within ``len(theta)``.
        theta: the examination curve, ``theta[r - 1]`` for rank r, values in (0, 1]
            (an estimate from ``estimate_theta_swap`` or ``estimate_theta_em``).
        max_weight: the largest weight (>= 1; ``inf`` disables the clip).

    Returns:
        A float array of weights, one per entry of ``ranks``.
    """
    theta = _theta_array(theta)
    ranks = _int_array(ranks, "ranks")
    if isinstance(max_weight, (bool, np.bool_)) or not isinstance(max_weight, (int, float, np.integer, np.floating)):
        raise OnlineError(f"max_weight must be a number >= 1 or inf, got {max_weight!r}")
    if np.isnan(max_weight) or max_weight < 1:
        raise OnlineError(f"max_weight must be a number >= 1 or inf, got {max_weight!r}")
    if len(ranks) and (ranks.min() < 1 or ranks.max() > len(theta)):
        bad = ranks[(ranks < 1) | (ranks > len(theta))][0]
        raise OnlineError(f"ranks must be in 1..{len(theta)} (the ranks theta covers), got {int(bad)}")
    return np.minimum(1.0 / theta[ranks - 1], float(max_weight))


__all__ = [
    "SWAP_MODES",
    "power_law_theta",
    "naive_theta",
    "ClickLog",
    "simulate_pbm_log",
    "SwapEstimate",
    "estimate_theta_swap",
    "EMEstimate",
    "estimate_theta_em",
    "ips_weights",
]
