"""Contrastive training data and losses, and the one place that gathers everything chapters 03-04 use.

A contrastive data point is a query, one positive (an image that should rank
high for it) and n-1 negatives; its label is the index of the positive. The
loss turns similarities into a softmax over the n candidates and applies
cross-entropy, i.e. it is n-way classification of "which one is the positive".

SimCLR builds such data points from a batch for free: two random augmentations
of each image are each other's positive, and the other 2N-2 views are the
negatives (``nt_xent``).

Where each name lives (import from there in new code; every name is also
importable from here, so ``contrastive.<name>`` keeps working):

* ``contrastive.datapoints``, chapter 03, the data: ``make_datapoints`` (query,
  positive, n-1 negatives, label) and three sources of positives,
  ``positives_from_augmentation``, ``positives_from_clicks`` and
  ``positives_from_labels``, merged by ``combine_positives`` and compared by
  ``positive_precision``;
* ``contrastive.losses``, chapter 04, the loss step by step: ``SIMILARITY_KINDS``,
  ``similarities`` (dot, cosine, euclidean), ``softmax_cross_entropy`` (written
  out), ``triplet_loss`` for contrast, SimCLR's ``nt_xent`` and MoCo's ``moco_infonce``;
* re-exported from their own modules, which are not part of this package because
  they are jobs of their own: ``visual_search.augment.augment_batch`` (SimCLR's
  batched per-image augmentations) and, from ``visual_search.clicks``, the click-log
  format and simulator ``ClickLog``, ``simulate_click_log``, ``CLICK_PROBABILITY``
  and ``RANDOM_SHOWN_SAME_CLASS`` (the online-evaluation chapter reads click logs
  too); and ``visual_search.errors.ContrastiveError``, what this package raises
  (``simulate_click_log`` and ``ClickLog`` raise ``ClickLogError``).

Data flow: data -> preprocess -> models -> embed -> augment -> clicks -> contrastive
-> train; this package imports ``augment`` and ``clicks`` (plus ``errors`` and
``_checks``), and ``train`` imports it.
"""

from __future__ import annotations

from visual_search.augment import augment_batch
from visual_search.clicks import (
    CLICK_PROBABILITY,
    RANDOM_SHOWN_SAME_CLASS,
    ClickLog,
    simulate_click_log,
)
from visual_search.contrastive.datapoints import (
    combine_positives,
    make_datapoints,
    positive_precision,
    positives_from_augmentation,
    positives_from_clicks,
    positives_from_labels,
)
from visual_search.contrastive.losses import (
    SIMILARITY_KINDS,
    moco_infonce,
    nt_xent,
    similarities,
    softmax_cross_entropy,
    triplet_loss,
)
from visual_search.errors import ContrastiveError

__all__ = [
    "CLICK_PROBABILITY",
    "RANDOM_SHOWN_SAME_CLASS",
    "SIMILARITY_KINDS",
    "ClickLog",
    "ContrastiveError",
    "augment_batch",
    "combine_positives",
    "make_datapoints",
    "moco_infonce",
    "nt_xent",
    "positive_precision",
    "positives_from_augmentation",
    "positives_from_clicks",
    "positives_from_labels",
    "similarities",
    "simulate_click_log",
    "softmax_cross_entropy",
    "triplet_loss",
]
