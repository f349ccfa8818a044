"""An online experiment served by the real service: A/B arms, interleaving, and RandPair swaps.

The service (chapter 09) can serve several models side by side
(``VisualSearchService.add_variant``); an ``Experiment`` decides, per search, what a
user sees and records what it did in the query log's ``experiment`` column, so the
log alone is enough to analyse the experiment afterwards (``online.logs``):

* ``mode="ab"``: each user is assigned to one arm by hashing their id with the
  experiment's name (``assign``), and always sees that arm's model. Logged as
  ``{"experiment": name, "variant": arm}``.
* ``mode="interleave"``: every user sees one list, team-draft interleaved from both
  arms' rankings (``team_draft_interleave``); a click credits the team that
  contributed the result. Logged as ``{"experiment": name, "arms": [a, b], "teams": "abba..."}``
  with the teams named by ``"a"`` (the first arm) and ``"b"``.
* ``swap_rate`` (A/B mode): a RandPair intervention (Wang et al. 2016; Joachims et al.
  2017): with that probability an impression has rank 1 swapped with a rank k drawn
  uniformly from 2..min(``swap_depth``, results shown) (``swap_mode="first"``), or k-1
  with k (``"adjacent"``); so search with k >= ``swap_depth`` for every depth to be swapped. Logged as ``"swap": k, "swap_mode": mode``; ``position_bias``
  turns those impressions into the examination curve. The cost is a slightly worse
  list for a small share of users, which is why the rate is kept low in production.

Nothing here changes how the service ranks: every list comes from its own search
(``search(..., log=False)``), and ``log_impression`` records what was finally shown,
so clicks are checked by the service against it like any other click.

An ``Experiment`` has the service's ``search`` and ``click`` methods and its
``catalog``, so ``run_simulated_users`` drives it exactly as it drives the service.

Errors: ``visual_search.errors.OnlineError`` for a bad experiment; the service's own
errors pass through.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import numpy as np

from visual_search._checks import check_int, check_real, check_seed
from visual_search.errors import OnlineError
from visual_search.online.assignment import assign
from visual_search.online.interleaving import team_draft_interleave
from visual_search.online.position_bias import SWAP_MODES
from visual_search.service.core import Result, SearchResponse, VisualSearchService

MODES = ("ab", "interleave")


class Experiment:
    """Route searches to the arms of an experiment on one service, and log what each user saw.

    Args:
        service: the running ``VisualSearchService``.
        name: the experiment's name: the salt of the assignment, and its label in the log.
        arms: ``{arm label: service variant}``, in order; a variant of None is the main model.
            A/B needs at least one arm (one arm: plain serving, e.g. with RandPair swaps);
            interleaving exactly two.
        weights: A/B traffic shares per arm (default equal).
        mode: ``"ab"`` or ``"interleave"``.
        swap_rate: A/B only: the share of impressions that get a RandPair swap, in [0, 1].
        swap_mode: ``"first"`` (rank 1 with rank k) or ``"adjacent"`` (k - 1 with k).
        swap_depth: the deepest rank a swap reaches (2..100).
        seed: seeds the swaps and the interleaving coin flips.

    Raises:
        OnlineError: an unknown variant, a bad mode, rate, depth or arm count.
    """

    def __init__(
        self,
        service: VisualSearchService,
        name: str,
        arms: Mapping[str, str | None],
        weights: Sequence[float] | None = None,
        mode: str = "ab",
        swap_rate: float = 0.0,
        swap_mode: str = "first",
        swap_depth: int = 10,
        seed: int = 0,
    ) -> None:
        if not isinstance(service, VisualSearchService):
            raise OnlineError(f"service: expected a VisualSearchService, got {type(service).__name__}")
        if not isinstance(name, str) or not name or not name.isprintable():
            raise OnlineError(f"name: expected a non-empty printable string, got {name!r}")
        if mode not in MODES:
            raise OnlineError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(arms, Mapping) or not arms:
            raise OnlineError(f"arms: expected a non-empty mapping of arm label -> service variant, got {arms!r}")
        for label, variant in arms.items():
            if not isinstance(label, str) or not label:
                raise OnlineError(f"arms: arm labels must be non-empty strings, got {label!r}")
            if variant is not None and variant not in service.variants:
                raise OnlineError(f"arms: arm {label!r} names variant {variant!r}, which the service does not serve "
                                  f"(its variants: {sorted(service.variants)}; None is the main model)")
        if mode == "interleave" and len(arms) != 2:
            raise OnlineError(f"arms: interleaving compares exactly two arms, got {len(arms)}")
        self.swap_rate = check_real(swap_rate, "swap_rate", low=0.0, high=1.0, error=OnlineError)
        if mode == "interleave" and self.swap_rate > 0:
            raise OnlineError("swap_rate: swaps are for A/B mode; an interleaved list already mixes two rankings")
        if swap_mode not in SWAP_MODES:
            raise OnlineError(f"swap_mode must be one of {SWAP_MODES}, got {swap_mode!r}")
        self.swap_depth = check_int(swap_depth, "swap_depth", low=2, high=100, error=OnlineError)
        self.service, self.name, self.mode, self.swap_mode = service, name, mode, swap_mode
        self.arms: dict[str, str | None] = dict(arms)
        self.labels = tuple(self.arms)
        try:
            self.weights = None if weights is None else tuple(weights)
        except TypeError:
            raise OnlineError(f"weights: expected one traffic share per arm, got {weights!r}") from None
        if mode == "ab" and len(self.labels) > 1:
            assign("check", name, self.labels, self.weights)  # bad weights fail now, naming them, not at the first search
        self._rng = np.random.default_rng(check_seed(seed, error=OnlineError))
        self._rng_lock = threading.Lock()

    # the parts of the service's interface that run_simulated_users uses
    @property
    def catalog(self):
        return self.service.catalog

    def click(self, query_id: str, image_id: int, rank: int) -> None:
        """Log a click through the service (checked against what this experiment showed)."""
        self.service.click(query_id, image_id, rank)

    def arm_of(self, user: str) -> str:
        """The arm ``user`` is in (A/B: by hashing; interleaving: every user sees both)."""
        if self.mode == "interleave":
            raise OnlineError("arm_of: in an interleaving experiment every user sees both arms")
        if len(self.labels) == 1:
            return self.labels[0]
        return assign(user, self.name, self.labels, self.weights)

    def search(self, image: bytes | np.ndarray, box: Sequence[float] | None = None, k: int = 20, user: str | None = None) -> SearchResponse:
        """Search as ``user`` sees it in this experiment, log the impression, and return it.

        Raises:
            OnlineError: no user (an experiment assigns by user id).
        """
        if user is None:
            raise OnlineError("user: an experiment assigns arms by user id, so a search needs one")
        if self.mode == "interleave":
            return self._interleaved(image, box, k, user)
        arm = self.arm_of(user)
        response = self.service.search(image, box=box, k=k, user=user, variant=self.arms[arm], log=False)
        results = list(response.results)
        record: dict = {"experiment": self.name, "variant": arm}
        with self._rng_lock:
            swap = self._rng.random() < self.swap_rate
            depth = min(self.swap_depth, len(results))
            kk = int(self._rng.integers(2, depth + 1)) if swap and depth >= 2 else 0
        if kk:
            a, b = (1, kk) if self.swap_mode == "first" else (kk - 1, kk)
            results[a - 1], results[b - 1] = results[b - 1], results[a - 1]
            record.update(swap=kk, swap_mode=self.swap_mode)
        return self._log(response, results, user, response.model_version, record)

    def _interleaved(self, image, box, k: int, user: str) -> SearchResponse:
        (label_a, label_b) = self.labels
        ra = self.service.search(image, box=box, k=k, user=user, variant=self.arms[label_a], log=False)
        rb = self.service.search(image, box=box, k=k, user=user, variant=self.arms[label_b], log=False)
        by_id = {r.id: r for r in rb.results} | {r.id: r for r in ra.results}
        with self._rng_lock:
            items, teams = team_draft_interleave([r.id for r in ra.results], [r.id for r in rb.results], self._rng, k=k)
        record = {"experiment": self.name, "arms": [label_a, label_b], "teams": "".join(teams)}
        timing = {key: ra.timing_ms[key] + rb.timing_ms[key] for key in ra.timing_ms}
        merged = SearchResponse("", f"interleaved:{ra.model_version}|{rb.model_version}", [], {}, timing, ra.fetched + rb.fetched)
        return self._log(merged, [by_id[i] for i in items], user, merged.model_version, record)

    def _log(self, response: SearchResponse, results: list[Result], user: str, model_version: str, record: dict) -> SearchResponse:
        query_id = self.service.log_impression(user, model_version, [r.id for r in results], record)
        ranked = [Result(r.id, r.score, rank, r.url) for rank, r in enumerate(results, start=1)]
        return SearchResponse(query_id, model_version, ranked, response.dropped, response.timing_ms, response.fetched)


__all__ = ["MODES", "Experiment"]
