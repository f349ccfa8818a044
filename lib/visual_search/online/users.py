"""Simulated users with a known truth, to test online metrics on the real service.

We have no users, so we simulate them with click models whose parameters we choose:
an online metric (CTR, an interleaving winner, a position-bias estimate) can then be
checked against the truth that generated the clicks.

Relevance. A shown image's 0-5 grade for a query follows the graded evaluation set
(``visual_search.evalset``): where a row of its ``grades`` is given for the query, the
grade is read from it; otherwise from labels, with the same rule the evaluation set
uses: same class -> ``GRADE_SAME_CLASS`` (3), same super-category -> ``GRADE_SAME_SUPER_CATEGORY``
(1), anything else (or an image without a label, such as an upload) -> 0. The
super-categories are ``data.SUPER_CATEGORIES``: tops {T-shirt/top, Pullover, Coat, Shirt},
bottoms {Trouser}, dresses {Dress}, footwear {Sandal, Sneaker, Ankle boot}, bags {Bag}.

Attractiveness. ``ATTRACTIVENESS[g]`` is the probability that a user who examines a result
of grade g clicks it: 0.02 for grade 0 (noise: curiosity, mis-taps), rising to 0.9 for a
near-duplicate (grade 5). Any table of six probabilities can be passed instead.

Two click models (Chuklin, Markov and de Rijke, "Click Models for Web Search", 2015):

* ``PositionBasedModel`` (PBM): the user examines rank r (1-based) with probability
  ``examination(r)``, independently of everything else, default ``1 / r ** eta``; an
  examined result is clicked with probability ``attractiveness(grade)``. So
  ``P(click at r) = examination(r) * attractiveness(grade_r)``, independently per rank,
  any number of clicks per page. ``examination_curve(n)`` is the true curve, for
  comparing a position-bias estimator with it.
* ``CascadeModel``: the user scans top-down; at each result they click with probability
  ``attractiveness(grade)``; after a click they go on with probability ``continuation``
  (0: the classic cascade, at most one click) and leave otherwise; without a click they go
  on. So rank r is examined with probability ``prod_{j<r} (1 - a_j (1 - continuation))``.

``UserPopulation`` makes users differ: each user's own click propensity scales the
PBM's attractiveness (a Beta draw, fixed per user id), while all share one
examination curve; it is a function user id -> click model.

``simulate_clicks`` draws one page's clicks, ``simulate_click_matrix`` many pages' at once;
both are deterministic for a seeded Generator.

``run_simulated_users`` drives simulated users against the REAL service, in-process
(a ``VisualSearchService``) or over HTTP (a base URL, or an ``httpx.Client`` such as
FastAPI's ``TestClient``): each user searches with a query image (``user=<id>``),
the shown ids are graded, clicks are simulated and posted through the service's own
click endpoint, so every row of the logs is genuine service output.

Errors: ``visual_search.errors.OnlineError``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from visual_search._checks import check_int, check_real, check_seed
from visual_search.data import SUPER_CATEGORY_OF_LABEL
from visual_search.errors import OnlineError
from visual_search.evalset import GRADE_OTHER, GRADE_SAME_CLASS, GRADE_SAME_SUPER_CATEGORY
from visual_search.service.blobs import png_bytes

MAX_GRADE = 5
#: P(click | examined) for grades 0..5.
ATTRACTIVENESS: tuple[float, ...] = (0.02, 0.10, 0.25, 0.50, 0.70, 0.90)


def _attractiveness(table: object) -> np.ndarray:
    try:
        arr = np.asarray(table, dtype=np.float64)
    except (TypeError, ValueError):
        raise OnlineError(f"attractiveness: expected {MAX_GRADE + 1} probabilities (grades 0..{MAX_GRADE}), got {table!r}") from None
    if arr.shape != (MAX_GRADE + 1,) or not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise OnlineError(f"attractiveness: expected {MAX_GRADE + 1} probabilities in [0, 1] (grades 0..{MAX_GRADE}), got {table!r}")
    return arr


def _grades(grades: object, ndim: int) -> np.ndarray:
    arr = np.asarray(grades)
    if arr.size == 0 and arr.ndim == ndim:
        return arr.astype(np.int64)
    if arr.ndim != ndim or not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        raise OnlineError(f"grades_shown: expected a {ndim}-D array of integer grades 0..{MAX_GRADE}, got {arr.dtype} with shape {list(arr.shape)}")
    if arr.min() < 0 or arr.max() > MAX_GRADE:
        raise OnlineError(f"grades_shown: grades must be in 0..{MAX_GRADE}, got {arr.min()}..{arr.max()}")
    return arr.astype(np.int64)


def _generator(rng: object) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise OnlineError(f"rng: expected a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    return rng


@dataclass(frozen=True)
class PositionBasedModel:
    """The PBM: ``P(click at rank r) = examination(r) * attractiveness[grade_r]``, independently per rank.

    Args:
        eta: the default curve's steepness, ``examination(r) = 1 / r ** eta`` (0: every rank examined).
        attractiveness: P(click | examined) for grades 0..5.
        examination: an explicit curve (probabilities for ranks 1, 2, ...), replacing ``1 / r ** eta``;
            ranks beyond it are never examined.
    """

    eta: float = 1.0
    attractiveness: tuple[float, ...] = ATTRACTIVENESS
    examination: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        check_real(self.eta, "PositionBasedModel: eta", low=0, error=OnlineError)
        object.__setattr__(self, "attractiveness", tuple(_attractiveness(self.attractiveness).tolist()))
        if self.examination is not None:
            curve = np.asarray(self.examination, dtype=np.float64)
            if curve.ndim != 1 or not np.isfinite(curve).all() or (curve.size and (curve.min() < 0 or curve.max() > 1)):
                raise OnlineError(f"PositionBasedModel: examination must be a 1-D curve of probabilities in [0, 1], got {self.examination!r}")
            object.__setattr__(self, "examination", tuple(curve.tolist()))

    def examination_curve(self, n: int) -> np.ndarray:
        """The true P(examine rank r) for ranks 1..n, float64 ``[n]``."""
        n = check_int(n, "n", low=0, error=OnlineError)
        if self.examination is not None:
            curve = np.zeros(n)
            m = min(n, len(self.examination))
            curve[:m] = self.examination[:m]
            return curve
        return 1.0 / np.arange(1, n + 1, dtype=np.float64) ** self.eta

    def click_probabilities(self, grades_shown: object) -> np.ndarray:
        """P(click) per rank for one page's grades (or ``[S, n]`` pages)."""
        g = np.asarray(grades_shown)
        g = _grades(g, max(g.ndim, 1))
        return self.examination_curve(g.shape[-1]) * np.asarray(self.attractiveness)[g]


@dataclass(frozen=True)
class CascadeModel:
    """The cascade: scan top-down, click with ``attractiveness[grade]``, then go on with ``continuation``."""

    attractiveness: tuple[float, ...] = ATTRACTIVENESS
    continuation: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "attractiveness", tuple(_attractiveness(self.attractiveness).tolist()))
        check_real(self.continuation, "CascadeModel: continuation", low=0, high=1, error=OnlineError)

    def click_probabilities(self, grades_shown: object) -> np.ndarray:
        """P(click) per rank: ``a_r * prod_{j<r} (1 - a_j (1 - continuation))``."""
        g = np.asarray(grades_shown)
        g = _grades(g, max(g.ndim, 1))
        a = np.asarray(self.attractiveness)[g]
        go_on = 1 - a * (1 - self.continuation)
        examined = np.cumprod(np.concatenate([np.ones(a.shape[:-1] + (1,)), go_on[..., :-1]], axis=-1), axis=-1)
        return a * examined


ClickModel = PositionBasedModel | CascadeModel


@dataclass(frozen=True)
class UserPopulation:
    """Users who differ: each has their own click propensity, and all share one examination curve.

    Real users are not alike: some click on almost anything, some rarely click at all.
    User ``u`` gets a propensity ``c_u ~ Beta(propensity_a, propensity_b)`` (mean
    ``a / (a + b)``; the default Beta(0.5, 1.5) has mean 0.25 and puts many users near 0), drawn from a generator seeded by the population's ``seed`` and the
    user id, so the same user always behaves the same way; their click model is the PBM
    with ``attractiveness[g] = min(1, c_u * scale * base[g])``, where ``scale`` is
    ``1 / mean propensity``: the user of mean propensity clicks exactly as ``base`` says (the
    clip at 1 pulls the population's mean below ``base`` for the high grades).

    Because everyone shares ``examination(r) = 1 / r ** eta``, the PBM holds for every
    user with the same curve, and ``examination_curve`` is the truth a position-bias
    estimator should recover. Calling the population with a user id returns that user's
    ``PositionBasedModel``: ``run_simulated_users(target, population, ...)``.

    Heterogeneity is what the literature credits for interleaving's advantage: an A/B
    test's per-user metric carries the between-user variance (when users search more than
    once, it does not average away), while interleaving compares both rankers inside each
    user's own query. Low-propensity users also produce more tied queries, which costs
    interleaving, so the net effect on the two designs is an empirical question.
    """

    eta: float = 1.0
    propensity_a: float = 0.5
    propensity_b: float = 1.5
    base: tuple[float, ...] = ATTRACTIVENESS
    seed: int = 0

    def __post_init__(self) -> None:
        check_real(self.eta, "UserPopulation: eta", low=0, error=OnlineError)
        for name in ("propensity_a", "propensity_b"):
            check_real(getattr(self, name), f"UserPopulation: {name}", low=0, low_open=True, error=OnlineError)
        object.__setattr__(self, "base", tuple(_attractiveness(self.base).tolist()))
        check_seed(self.seed, error=OnlineError)

    @property
    def mean_propensity(self) -> float:
        return self.propensity_a / (self.propensity_a + self.propensity_b)

    def propensity(self, user: str) -> float:
        """User ``user``'s click propensity ``c_u`` (deterministic)."""
        if not isinstance(user, str):
            raise OnlineError(f"user: expected a user id string, got {user!r}")
        digest = int.from_bytes(hashlib.sha256(user.encode()).digest()[:8], "big")
        rng = np.random.default_rng([self.seed, digest])
        return float(rng.beta(self.propensity_a, self.propensity_b))

    def __call__(self, user: str) -> PositionBasedModel:
        c = self.propensity(user) / self.mean_propensity
        return PositionBasedModel(self.eta, tuple(np.minimum(1.0, c * np.asarray(self.base)).tolist()))

    def examination_curve(self, n: int) -> np.ndarray:
        """The true P(examine rank r), shared by every user, for ranks 1..n."""
        return PositionBasedModel(self.eta).examination_curve(n)


def simulate_click_matrix(model: ClickModel, grades: object, rng: np.random.Generator) -> np.ndarray:
    """Clicks on ``S`` pages at once: bool ``[S, n]`` for int grades ``[S, n]`` (rank 1 is column 0)."""
    if not isinstance(model, (PositionBasedModel, CascadeModel)):
        raise OnlineError(f"model: expected a PositionBasedModel or CascadeModel, got {type(model).__name__}")
    g = _grades(grades, 2)
    rng = _generator(rng)
    a = np.asarray(model.attractiveness)[g]
    attracted = rng.random(g.shape) < a
    if isinstance(model, PositionBasedModel):
        examined = rng.random(g.shape) < model.examination_curve(g.shape[1])
        return examined & attracted
    leaves = attracted & ~(rng.random(g.shape) < model.continuation)  # clicked here and stopped
    stopped_before = np.cumsum(leaves, axis=1) - leaves > 0
    return attracted & ~stopped_before


def simulate_clicks(model: ClickModel, grades_shown: object, rng: np.random.Generator) -> np.ndarray:
    """The clicked 0-based positions (ascending, int64) of one page with these grades (top first)."""
    g = _grades(grades_shown, 1)
    return np.flatnonzero(simulate_click_matrix(model, g[None, :], rng)[0]).astype(np.int64)


def grades_from_labels(query_label: int, shown_labels: Sequence[int | None]) -> np.ndarray:
    """The evaluation set's label rule: same class 3, same super-category 1, else (or no label) 0."""
    query_label = check_int(query_label, "query_label", low=0, high=len(SUPER_CATEGORY_OF_LABEL) - 1, error=OnlineError)
    out = np.full(len(shown_labels), GRADE_OTHER, dtype=np.int64)
    for i, label in enumerate(shown_labels):
        if label is None:
            continue
        label = check_int(label, "shown label", low=0, high=len(SUPER_CATEGORY_OF_LABEL) - 1, error=OnlineError)
        if label == query_label:
            out[i] = GRADE_SAME_CLASS
        elif SUPER_CATEGORY_OF_LABEL[label] == SUPER_CATEGORY_OF_LABEL[query_label]:
            out[i] = GRADE_SAME_SUPER_CATEGORY
    return out


def relevance_grades(shown_ids: Sequence[int], query_label: int, label_of: Callable[[int], int | None],
                     grades_row: np.ndarray | None = None) -> np.ndarray:
    """Grades of the shown ids: from ``grades_row[id]`` where given and in range, else from labels.

    Args:
        shown_ids: image ids, top first.
        query_label: the query image's class.
        label_of: id -> class label, or None for an image without one.
        grades_row: the query's row of a graded evaluation set, indexed by image id (optional).
    """
    ids = [int(i) for i in shown_ids]
    out = grades_from_labels(query_label, [label_of(i) for i in ids])
    if grades_row is not None:
        row = np.asarray(grades_row)
        for j, i in enumerate(ids):
            if 0 <= i < len(row):
                out[j] = int(row[i])
    return out


@dataclass
class SimulationSummary:
    """What ``run_simulated_users`` did.

    Attributes:
        users: simulated users. queries: searches sent. clicks: clicks posted.
        results_shown: results returned over all searches.
        impressions: per search, ``{"query_id", "user", "query_index", "shown", "grades", "clicked_ranks"}``
            (ranks 1-based, as the service numbers them).
    """

    users: int = 0
    queries: int = 0
    clicks: int = 0
    results_shown: int = 0
    impressions: list[dict] = field(default_factory=list)


def _ok(response, what: str):
    """The response if it succeeded; else OnlineError with the status and the service's detail."""
    if response.status_code >= 400:
        raise OnlineError(f"{what}: the service answered {response.status_code}: {response.text[:300]}")
    return response


def run_simulated_users(
    target: object,
    model: ClickModel | Callable[[str], ClickModel],
    query_images: np.ndarray,
    query_labels: np.ndarray,
    *,
    n_users: int = 100,
    searches_per_user: int = 1,
    k: int = 10,
    seed: int = 0,
    grades: np.ndarray | None = None,
    label_of: Mapping[int, int] | np.ndarray | None = None,
    user_prefix: str = "sim-",
    progress: bool | str = False,
) -> SimulationSummary:
    """Simulated users search the real service and click what the click model says.

    For each user ``f"{user_prefix}{u}"`` (u = 0..n_users-1) and each of their searches: a
    query image is drawn uniformly from ``query_images``, sent to the service with
    ``user=<id>`` and ``k``; the shown ids are graded (``relevance_grades``); clicks are
    drawn from ``model`` and each is posted through the service's click endpoint, top first.

    Args:
        target: a ``VisualSearchService`` or an ``online.experiment.Experiment`` on one (in-process), a base URL such as ``"http://127.0.0.1:8000"``,
            or an HTTP client with httpx's ``post`` (an ``httpx.Client``, FastAPI's ``TestClient``).
        model: a click model, or a function user id -> click model (different users, different behaviour).
        query_images: uint8 ``[Q, H, W]``. query_labels: int ``[Q]``.
        n_users, searches_per_user, k: bounded loop sizes (k: results asked for, 1..100).
        seed: seeds the query choice and the clicks (two independent streams: the same seed draws the same
            queries whatever ``k`` or the click model).
        grades: optional ``[Q, G]`` grades (e.g. a graded evaluation set's, restricted to the service's
            gallery ids); row q is used for query q, ids >= G fall back to labels.
        label_of: id -> label (a mapping, or an array indexed by id) for the shown ids. Needed over HTTP;
            in-process the catalog's ``label`` column is read instead when it is None.
        progress: show a tqdm bar over the users (a string is its label): a wave of thousands of
            users takes minutes, and a silent cell looks stuck.

    Raises:
        OnlineError: bad arguments, HTTP without ``label_of``, or an HTTP error answer (its status and detail).
            In-process, the service's own errors pass through.
    """
    import httpx

    from visual_search.service.core import VisualSearchService

    n_users = check_int(n_users, "n_users", low=0, high=1_000_000, error=OnlineError)
    searches_per_user = check_int(searches_per_user, "searches_per_user", low=1, high=10_000, error=OnlineError)
    k = check_int(k, "k", low=1, high=100, error=OnlineError)
    seed = check_seed(seed, error=OnlineError)
    query_images = np.asarray(query_images)
    query_labels = np.asarray(query_labels)
    if query_images.ndim != 3 or query_images.dtype != np.uint8 or len(query_images) == 0:
        raise OnlineError(f"query_images: expected uint8 [Q, H, W] with Q >= 1, got {query_images.dtype} {list(query_images.shape)}")
    if query_labels.shape != (len(query_images),) or not np.issubdtype(query_labels.dtype, np.integer):
        raise OnlineError(f"query_labels: expected {len(query_images)} integer labels, got {query_labels.dtype} {list(query_labels.shape)}")
    if grades is not None:
        grades = np.asarray(grades)
        if grades.ndim != 2 or len(grades) != len(query_images):
            raise OnlineError(f"grades: expected [Q={len(query_images)}, G], got shape {list(grades.shape)}")
    if not isinstance(model, (PositionBasedModel, CascadeModel)) and not callable(model):
        raise OnlineError(f"model: expected a click model or a function user id -> click model, got {type(model).__name__}")
    model_of = model if not isinstance(model, (PositionBasedModel, CascadeModel)) else (lambda _user: model)

    from visual_search.online.experiment import Experiment

    in_process = isinstance(target, (VisualSearchService, Experiment))
    own_client = None
    if not in_process:
        if isinstance(target, str):
            own_client = client = httpx.Client(base_url=target, timeout=30)
        elif isinstance(target, httpx.Client) or callable(getattr(target, "post", None)):
            client = target  # an httpx.Client, or anything with its post(url, files=, data=, json=): a TestClient
        else:
            raise OnlineError(f"target: expected a VisualSearchService, a base URL or an HTTP client, got {type(target).__name__}")
        if label_of is None:
            raise OnlineError("label_of: over HTTP the labels of gallery ids must be given (a mapping or an array indexed by id)")

    def labels_for(ids: list[int]) -> Callable[[int], int | None]:
        if label_of is not None:
            if isinstance(label_of, Mapping):
                return lambda i: label_of.get(i)
            arr = np.asarray(label_of)
            return lambda i: int(arr[i]) if 0 <= i < len(arr) else None
        records = target.catalog.records(ids)
        return lambda i: records[i].label if i in records else None

    query_rng, click_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))  # k does not change the queries
    summary = SimulationSummary()
    try:
        users = range(n_users)
        if progress:
            from tqdm.auto import tqdm

            users = tqdm(users, desc=progress if isinstance(progress, str) else "simulated users", unit="user")
        for u in users:
            user = f"{user_prefix}{u}"
            user_model = model_of(user)
            summary.users += 1
            for _ in range(searches_per_user):
                q = int(query_rng.integers(len(query_images)))
                if in_process:
                    response = target.search(query_images[q], k=k, user=user)
                    query_id = response.query_id
                    shown = [r.id for r in response.results]
                else:
                    r = client.post("/search", files={"image": ("query.png", png_bytes(query_images[q]), "image/png")},
                                    data={"k": str(k), "user": user})
                    body = _ok(r, "POST /search").json()
                    query_id = body["query_id"]
                    shown = [int(x["id"]) for x in sorted(body["results"], key=lambda x: x["rank"])]
                g = relevance_grades(shown, int(query_labels[q]), labels_for(shown), None if grades is None else grades[q])
                clicked = simulate_clicks(user_model, g, click_rng) if shown else np.empty(0, np.int64)
                for pos in clicked.tolist():
                    if in_process:
                        target.click(query_id, shown[pos], pos + 1)
                    else:
                        _ok(client.post("/clicks", json={"query_id": query_id, "image_id": shown[pos], "rank": pos + 1}), "POST /clicks")
                summary.queries += 1
                summary.clicks += len(clicked)
                summary.results_shown += len(shown)
                summary.impressions.append({"query_id": query_id, "user": user, "query_index": q, "shown": shown,
                                            "grades": g.tolist(), "clicked_ranks": (clicked + 1).tolist()})
    finally:
        if own_client is not None:
            own_client.close()
    return summary


__all__ = [
    "ATTRACTIVENESS",
    "CascadeModel",
    "ClickModel",
    "PositionBasedModel",
    "SimulationSummary",
    "UserPopulation",
    "grades_from_labels",
    "relevance_grades",
    "run_simulated_users",
    "simulate_click_matrix",
    "simulate_clicks",
]
