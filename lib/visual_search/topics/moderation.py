"""Moderation: a small classifier on the embedding flags a disallowed category, and the threshold is set by what each error costs.

A marketplace must never show some content. Here one Fashion-MNIST class plays the
disallowed category (``DEFAULT_BLOCKED_CLASS``, "Sandal"; any class name will do). The
moderation model is a logistic regression (scikit-learn) on the frozen encoder's 64-d
embedding: the service already computes that vector for every image it stores or
searches, so moderation costs one 64-term dot product per image, and it needs no second
network. ``ModerationModel.score`` is the classifier's probability that an image is of the
blocked class, in [0, 1]; an image is **flagged** when its score is at least the threshold.

Two errors, with different prices:

* a **false positive** hides a good image: a seller's listing disappears (they appeal, a
  moderator looks, the listing comes back);
* a **false negative** shows a disallowed image to users: the incident moderation exists
  to prevent, and the one that reaches the press and the regulator.

So the threshold is not 0.5. If one false negative costs ``c_fn`` and one false positive
``c_fp``, flagging an image of score p costs ``(1 - p) * c_fp`` in expectation, and showing
it costs ``p * c_fn``; flag when the first is smaller, i.e. when
``p >= c_fp / (c_fp + c_fn)`` (``bayes_threshold``). That holds only if the scores are
calibrated probabilities, which a logistic regression trained without class weights roughly
gives. ``choose_threshold`` does not trust the calibration: it counts the errors at every
threshold on scores the model did not train on (out-of-fold, ``cross_val_predict``) and keeps
the cheapest. With the defaults (a shown sandal costs 10 hidden good images) both thresholds
are far below 0.5: more good images are hidden, and nearly no sandal is shown.

Precision (of the flagged images, the share that really is blocked) and recall (of the
blocked images, the share flagged) are measured on held-out images: the sample's queries
(the model trains on its gallery) or, in full mode, the test split (it trains on the train
split). ``precision_recall_sweep`` lists both at many thresholds: the curve the threshold
moves along.

The service uses the model twice (``service.rerank.DropModerated`` and
``VisualSearchService(moderation=...)``): at **upload**, a flagged image is stored with
``blocked`` set (so the ``blocked`` rule hides it, as if a moderator had sent PATCH /images)
and its record's ``source`` says why; at **query time**, a re-ranking rule drops every
candidate whose stored vector the model flags, which also covers images stored before the
model existed (the gallery) and applies a new threshold at once, without rewriting the catalog.

Every bad input raises ``TopicsError`` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from visual_search import config, data
from visual_search._checks import check_real, check_seed
from visual_search.embed import embed, raw_pixel_embeddings
from visual_search.errors import TopicsError
from visual_search.models import Encoder
from visual_search.topics._validate import encoder_or_default
from visual_search.topics._validate import vectors as check_vectors

#: The class that plays the disallowed category. Sandal, because it is a realistic hard case:
#: it sits in the footwear super-category beside Sneaker and Ankle boot, which share its outline,
#: so the classifier makes real errors of both kinds and the threshold has something to trade
#: (at 0.5 it misses 4 of the sample's 50 query sandals, and most images it hides wrongly are
#: sneakers and ankle boots). Bag, the only class in its super-category, is nearly separable, and
#: Shirt, confused with the other tops, so hard (average precision 0.60 on the sample) that no
#: threshold is good; a real disallowed category is like Sandal: rare, with allowed lookalikes.
DEFAULT_BLOCKED_CLASS = "Sandal"
#: The threshold a model gets unless told otherwise: the classifier's own decision boundary.
DEFAULT_THRESHOLD = 0.5
#: The logistic regression's inverse regularisation strength. The embeddings are unit vectors, so
#: the logits need large weights: at C = 0.1 no held-out sandal of the sample reaches 0.5, and at
#: scikit-learn's default C = 1 the scores are still squeezed towards the base rate. For Sandal, the
#: out-of-fold average precision on the sample's gallery peaks at C = 10 (0.990) over 0.1 .. 1000.
DEFAULT_C = 10.0
#: What ``evaluate_moderation`` charges by default: a hidden good image 1, a shown disallowed one 10.
COST_FALSE_POSITIVE = 1.0
COST_FALSE_NEGATIVE = 10.0
#: Folds for the out-of-fold training scores that ``evaluate_moderation`` chooses a threshold on.
FOLDS = 5
#: The thresholds ``evaluate_moderation`` reports precision and recall at (the sweep itself uses every score).
SWEEP_THRESHOLDS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


# ---- checks --------------------------------------------------------------------------------------


def class_label(blocked_class: object) -> int:
    """The label (0..9) of a class named as in ``data.CLASS_NAMES`` ("Sandal", "Ankle boot").

    Raises:
        TopicsError: not a string, or no class has this name (the message lists them).
    """
    if not isinstance(blocked_class, str) or blocked_class not in data.CLASS_NAMES:
        raise TopicsError(f"blocked_class must be one of {list(data.CLASS_NAMES)}, got {blocked_class!r}")
    return data.CLASS_NAMES.index(blocked_class)


def _threshold(threshold: object) -> float:
    return check_real(threshold, "threshold", low=0.0, high=1.0, error=TopicsError)


def _cost(cost: object, name: str) -> float:
    return check_real(cost, name, low=0.0, high=1e12, low_open=True, error=TopicsError)


def _labels(labels: object, n: int) -> np.ndarray:
    """Class labels ``[n]``, integers 0..9, as int64."""
    array = np.asarray(labels) if isinstance(labels, (np.ndarray, Sequence)) and not isinstance(labels, (str, bytes)) else None
    if array is None or array.ndim != 1 or array.dtype.kind not in "iu":
        got = f"{array.dtype} {list(array.shape)}" if array is not None else type(labels).__name__
        raise TopicsError(f"labels must be an integer array [N] of class labels, got {got}")
    if len(array) != n:
        raise TopicsError(f"labels must have {n} entries (one per vector), got {len(array)}")
    if array.min() < 0 or array.max() >= len(data.CLASS_NAMES):
        raise TopicsError(f"labels must be class labels in 0..{len(data.CLASS_NAMES) - 1}, got {int(array.min())}..{int(array.max())}")
    return array.astype(np.int64)


def _booleans(x: object, name: str, what: str, n: int | None = None) -> np.ndarray:
    """A non-empty boolean array ``[N]`` (``n`` entries if given)."""
    if not isinstance(x, np.ndarray) or x.ndim != 1 or x.dtype != np.bool_ or len(x) == 0:
        got = f"{x.dtype} {list(x.shape)}" if isinstance(x, np.ndarray) else type(x).__name__
        raise TopicsError(f"{name} must be a non-empty boolean array [N] ({what}), got {got}")
    if n is not None and len(x) != n:
        raise TopicsError(f"{name} must have {n} entries (one per image), got {len(x)}")
    return x


def _scores_and_truth(scores: object, is_blocked: object) -> tuple[np.ndarray, np.ndarray]:
    """Scores ``[N]`` in [0, 1] (float64) and the truth ``[N]`` (bool) of the same length, both non-empty."""
    if not isinstance(scores, np.ndarray) or scores.ndim != 1 or scores.dtype.kind != "f" or len(scores) == 0:
        got = f"{scores.dtype} {list(scores.shape)}" if isinstance(scores, np.ndarray) else type(scores).__name__
        raise TopicsError(f"scores must be a non-empty float array [N], got {got}")
    if not np.isfinite(scores).all() or scores.min() < 0 or scores.max() > 1:
        raise TopicsError("scores must be finite numbers in [0, 1] (the model's scores), got NaN, infinity or values outside")
    return scores.astype(np.float64, copy=False), _booleans(is_blocked, "is_blocked", "is each image of the blocked class?", len(scores))


# ---- the model -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModerationDecision:
    """What the model decided about one image, and why (the service writes ``reason`` into a blocked record).

    Attributes:
        flagged: whether the image is to be hidden.
        score: its probability of being of the blocked class, or None when the model could not read
            its vector (an embedding from another image model: flagged, to be safe).
        threshold: the threshold the score was compared with.
        blocked_class: the class the model flags.
        reason: one line for people, e.g. ``"p(Sandal) = 0.973 >= threshold 0.091"``.
    """

    flagged: bool
    score: float | None
    threshold: float
    blocked_class: str
    reason: str


class ModerationModel:
    """A trained logistic regression that flags one class, with its threshold (build it with ``train_moderation``).

    Attributes:
        classifier: the fitted ``sklearn.linear_model.LogisticRegression`` (blocked class = 1).
        blocked_class: the class it flags (a name in ``data.CLASS_NAMES``).
        threshold: flag when the score is at least this, in [0, 1].
        model_version: the image model whose embeddings it was trained on (None: not recorded);
            the service refuses a model of another version, and the rule flags vectors of another.
        dim: the embedding size it reads.
    """

    def __init__(self, classifier: LogisticRegression, blocked_class: str, threshold: float = DEFAULT_THRESHOLD,
                 model_version: str | None = None) -> None:
        if not isinstance(classifier, LogisticRegression) or not hasattr(classifier, "coef_") or classifier.coef_.shape[0] != 1:
            raise TopicsError(f"classifier must be a fitted two-class sklearn LogisticRegression, got {type(classifier).__name__}")
        if model_version is not None and (not isinstance(model_version, str) or not model_version):
            raise TopicsError(f"model_version must be a non-empty string or None, got {model_version!r}")
        class_label(blocked_class)
        self.classifier = classifier
        self.blocked_class = blocked_class
        self.threshold = _threshold(threshold)
        self.model_version = model_version
        self._weights = classifier.coef_[0].astype(np.float64)
        self._bias = float(classifier.intercept_[0])

    @property
    def dim(self) -> int:
        return len(self._weights)

    def __repr__(self) -> str:
        return f"ModerationModel(blocked_class={self.blocked_class!r}, threshold={self.threshold:.3f}, dim={self.dim}, model_version={self.model_version!r})"

    def with_threshold(self, threshold: float) -> ModerationModel:
        """The same classifier with another threshold (a new model: this one is unchanged)."""
        return ModerationModel(self.classifier, self.blocked_class, threshold, self.model_version)

    def score(self, vectors: np.ndarray) -> np.ndarray:
        """The probability that each image is of the blocked class: float64 ``[N]`` in [0, 1].

        ``sigmoid(vectors @ w + b)``, the classifier's ``predict_proba(vectors)[:, 1]``
        computed directly (a search scores ~60 candidates, and this skips scikit-learn's per-call checks).

        Raises:
            TopicsError: ``vectors`` is not a finite float ``[N, dim]`` array.
        """
        x = check_vectors(vectors, "vectors", self.dim, dtype=np.float64, dim_note="the moderation model's embedding size")
        return expit(x @ self._weights + self._bias)

    def flag(self, vectors: np.ndarray) -> np.ndarray:
        """Which images to hide: bool ``[N]``, ``score >= threshold``."""
        return self.score(vectors) >= self.threshold

    def decide(self, vector: np.ndarray, model_version: str | None = None) -> ModerationDecision:
        """The decision about one image's embedding ``[dim]`` (or ``[1, dim]``), made by ``model_version``'s encoder.

        An embedding from another image model than the one the classifier was trained on is
        flagged without a score: a classifier that cannot read a vector cannot clear it.

        Raises:
            TopicsError: a vector of the wrong shape or dtype, or with NaN.
        """
        if isinstance(vector, np.ndarray) and vector.ndim == 1:
            vector = vector[None]
        if not isinstance(vector, np.ndarray) or vector.shape[:1] != (1,):
            got = f"{vector.dtype} {list(vector.shape)}" if isinstance(vector, np.ndarray) else type(vector).__name__
            raise TopicsError(f"vector must be one embedding [{self.dim}], got {got}")
        if model_version is not None and self.model_version is not None and model_version != self.model_version:
            return ModerationDecision(True, None, self.threshold, self.blocked_class,
                                      f"held: the {self.blocked_class!r} classifier was trained on model {self.model_version}, "
                                      f"not on {model_version}, so it cannot clear this image")
        p = float(self.score(vector)[0])
        flagged = p >= self.threshold
        return ModerationDecision(flagged, p, self.threshold, self.blocked_class,
                                  f"p({self.blocked_class}) = {p:.3f} {'>=' if flagged else '<'} threshold {self.threshold:.3f}")


def train_moderation(
    vectors: np.ndarray,
    labels: np.ndarray | Sequence[int],
    blocked_class: str = DEFAULT_BLOCKED_CLASS,
    threshold: float = DEFAULT_THRESHOLD,
    C: float = DEFAULT_C,
    seed: int = 0,
    model_version: str | None = None,
) -> ModerationModel:
    """Fit a logistic regression that tells the blocked class from every other class.

    No class weights: the blocked class is a tenth of the data, and an unweighted fit keeps the
    scores close to probabilities, which is what makes ``bayes_threshold`` meaningful. Where the
    errors cost differently, move the threshold, not the training.

    Args:
        vectors: float ``[N, D]`` embeddings (the service's encoder's).
        labels: integer class labels ``[N]``, 0..9; the blocked class and some other class must both occur.
        blocked_class: the class to flag, a name in ``data.CLASS_NAMES``.
        threshold: the model's threshold, in [0, 1] (change it later with ``with_threshold``).
        C: inverse L2 regularisation strength, > 0 (``DEFAULT_C`` says why 10).
        seed: the solver's ``random_state`` (lbfgs is deterministic; kept so any solver is seeded).
        model_version: the encoder's ``version``, recorded so the service can refuse a mismatch.

    Returns:
        A ``ModerationModel``.

    Raises:
        TopicsError: any bad argument, or labels with only one side of the split.
    """
    x = check_vectors(vectors, "vectors", dtype=np.float64)
    y = _labels(labels, len(x)) == class_label(blocked_class)
    threshold = _threshold(threshold)
    C = check_real(C, "C", low=0.0, high=1e9, low_open=True, error=TopicsError)
    seed = check_seed(seed, "seed", error=TopicsError)
    if y.all() or not y.any():
        raise TopicsError(f"labels must contain both {blocked_class!r} images and others, got {int(y.sum())} of {len(y)} {blocked_class!r}")
    classifier = LogisticRegression(C=C, max_iter=2_000, random_state=seed).fit(x, y)
    return ModerationModel(classifier, blocked_class, threshold, model_version)


#: The format tag ``save_moderation`` writes and ``load_moderation`` requires.
FILE_FORMAT = "visual_search.moderation/1"


def save_moderation(model: ModerationModel, path: str | Path) -> Path:
    """Write a moderation model to ``path`` as a NumPy ``.npz`` of plain arrays (no pickle). Returns the path.

    What is written: the weights and bias, the blocked class, the threshold and the image
    model's version. That is all ``score`` needs, and a file of plain arrays can be read
    without running anything in it (a pickled scikit-learn object could run code on load).

    Raises:
        TopicsError: ``model`` is not a ``ModerationModel``.
    """
    if not isinstance(model, ModerationModel):
        raise TopicsError(f"model: expected a ModerationModel, got {type(model).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object, so numpy does not append ".npz" to the name
        np.savez(f, format=np.array(FILE_FORMAT), weights=model._weights, bias=np.array(model._bias),
                 blocked_class=np.array(model.blocked_class), threshold=np.array(model.threshold),
                 model_version=np.array(model.model_version or ""))
    return path


def load_moderation(path: str | Path) -> ModerationModel:
    """Read a model written by ``save_moderation`` (``allow_pickle=False``: a forged file cannot run code).

    Raises:
        TopicsError: a missing or unreadable file, one that is not a moderation model, or damaged fields
            (a bad class, a threshold outside [0, 1], non-finite weights).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            fields = {name: f[name] for name in f.files}
    except FileNotFoundError:
        raise TopicsError(f"{path}: no such moderation model file") from None
    except Exception as err:  # numpy raises zip, value and OS errors for a damaged or foreign file
        raise TopicsError(f"{path}: not a readable moderation model ({type(err).__name__}: {err})") from None
    if str(fields.get("format", "")) != FILE_FORMAT:
        raise TopicsError(f"{path}: not a moderation model file (no format {FILE_FORMAT!r})")
    try:
        weights = np.asarray(fields["weights"], dtype=np.float64)
        bias = float(fields["bias"])
        blocked_class, version = str(fields["blocked_class"]), str(fields["model_version"])
        threshold = float(fields["threshold"])
    except (KeyError, TypeError, ValueError) as err:
        raise TopicsError(f"{path}: a damaged moderation model ({type(err).__name__}: {err})") from None
    if weights.ndim != 1 or len(weights) == 0 or not np.isfinite(weights).all() or not np.isfinite(bias):
        raise TopicsError(f"{path}: a damaged moderation model (weights must be a finite vector, got shape {list(weights.shape)})")
    classifier = LogisticRegression()
    classifier.classes_ = np.array([False, True])
    classifier.coef_, classifier.intercept_ = weights[None], np.array([bias])
    classifier.n_features_in_ = len(weights)
    try:
        return ModerationModel(classifier, blocked_class, threshold, version or None)
    except TopicsError as err:
        raise TopicsError(f"{path}: a damaged moderation model ({err})") from None


# ---- errors, thresholds and costs ---------------------------------------------------------------


def confusion(flagged: np.ndarray, is_blocked: np.ndarray) -> dict[str, int]:
    """Counts of the four outcomes: ``{"tp", "fp", "fn", "tn"}`` (tp: a blocked image flagged; fp: a good one flagged)."""
    flagged = _booleans(flagged, "flagged", "is each image flagged?")
    truth = _booleans(is_blocked, "is_blocked", "is each image of the blocked class?", len(flagged))
    return {"tp": int((flagged & truth).sum()), "fp": int((flagged & ~truth).sum()),
            "fn": int((~flagged & truth).sum()), "tn": int((~flagged & ~truth).sum())}


def precision_recall(flagged: np.ndarray, is_blocked: np.ndarray) -> dict[str, float]:
    """Precision and recall of flags against the truth, with the counts behind them.

    Precision is ``tp / (tp + fp)``, 1.0 when nothing is flagged (no good image was hidden:
    scikit-learn's ``zero_division=1``); recall is ``tp / (tp + fn)``, 1.0 when no image is blocked.

    Returns:
        ``{"precision", "recall", "tp", "fp", "fn", "tn"}``.
    """
    c = confusion(flagged, is_blocked)
    precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 1.0
    recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 1.0
    return {"precision": precision, "recall": recall, **{k: float(v) for k, v in c.items()}}


def precision_recall_sweep(scores: np.ndarray, is_blocked: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and error counts at every threshold that changes a decision: each distinct score.

    At threshold t the flagged images are those with ``score >= t`` (scikit-learn's
    ``precision_recall_curve`` convention). Thresholds ascend: recall falls along the
    arrays, and precision mostly rises.

    Returns:
        ``{"thresholds", "precision", "recall", "false_positives", "false_negatives"}``, arrays of one length.
    """
    scores, truth = _scores_and_truth(scores, is_blocked)
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    tp, fp = np.cumsum(t), np.cumsum(~t)  # flagging the top i + 1 scores
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # the last of each run of equal scores
    thresholds, tp, fp = s[last][::-1], tp[last][::-1], fp[last][::-1]
    positives = int(truth.sum())
    return {"thresholds": thresholds, "precision": tp / (tp + fp),
            "recall": tp / positives if positives else np.ones(len(tp)),
            "false_positives": fp.astype(np.int64), "false_negatives": (positives - tp).astype(np.int64)}


def bayes_threshold(cost_false_positive: float = COST_FALSE_POSITIVE, cost_false_negative: float = COST_FALSE_NEGATIVE) -> float:
    """The threshold that minimises the expected cost if the scores are calibrated: ``c_fp / (c_fp + c_fn)``.

    Flagging an image of probability p costs ``(1 - p) * c_fp`` in expectation, showing it
    ``p * c_fn``; they are equal at this p.
    """
    c_fp = _cost(cost_false_positive, "cost_false_positive")
    c_fn = _cost(cost_false_negative, "cost_false_negative")
    return c_fp / (c_fp + c_fn)


def choose_threshold(scores: np.ndarray, is_blocked: np.ndarray, cost_false_positive: float = COST_FALSE_POSITIVE,
                     cost_false_negative: float = COST_FALSE_NEGATIVE) -> dict[str, float]:
    """The threshold with the lowest total cost ``c_fp * FP + c_fn * FN`` on these scores.

    Choose it on scores the model did not train on (out-of-fold, or a validation split), then
    measure it on other held-out images: chosen and measured on the same images it looks better
    than it is. The candidates are every distinct score and 1 + (flag nothing, reported as 1.0).
    Every threshold between the best score and the next lower one makes the same decisions
    here; the midpoint is returned, so new images near the boundary are not all on one side.
    Ties in cost go to the lower threshold (more flags: the safer side).

    Returns:
        ``{"threshold", "cost", "cost_per_image", "false_positives", "false_negatives", "precision", "recall"}``.
    """
    c_fp = _cost(cost_false_positive, "cost_false_positive")
    c_fn = _cost(cost_false_negative, "cost_false_negative")
    sweep = precision_recall_sweep(scores, is_blocked)
    positives = int(np.asarray(is_blocked).sum())
    costs = np.r_[c_fp * sweep["false_positives"] + c_fn * sweep["false_negatives"], c_fn * positives]  # the last: flag nothing
    best = int(np.argmin(costs))
    if best == len(sweep["thresholds"]):
        threshold, fp, fn, precision, recall = 1.0, 0, positives, 1.0, 0.0 if positives else 1.0
    else:
        lower = sweep["thresholds"][best - 1] if best else 0.0
        threshold = float((lower + sweep["thresholds"][best]) / 2)
        fp, fn = int(sweep["false_positives"][best]), int(sweep["false_negatives"][best])
        precision, recall = float(sweep["precision"][best]), float(sweep["recall"][best])
    return {"threshold": threshold, "cost": float(costs[best]), "cost_per_image": float(costs[best]) / len(scores),
            "false_positives": float(fp), "false_negatives": float(fn), "precision": precision, "recall": recall}


def out_of_fold_scores(vectors: np.ndarray, is_blocked: np.ndarray, C: float = DEFAULT_C, seed: int = 0) -> np.ndarray:
    """Each training image's score from a classifier that did not train on it (``FOLDS``-fold, stratified, shuffled with ``seed``).

    These are the scores to choose a threshold on: the model's scores on its own training
    images are too confident.

    Raises:
        TopicsError: bad vectors, C or seed; ``is_blocked`` not one boolean per vector, or with
            fewer than ``FOLDS`` images on either side (each fold needs both).
    """
    x = check_vectors(vectors, "vectors", dtype=np.float64)
    truth = _booleans(is_blocked, "is_blocked", "is each image of the blocked class?", len(x))
    C = check_real(C, "C", low=0.0, high=1e9, low_open=True, error=TopicsError)
    seed = check_seed(seed, "seed", error=TopicsError)
    if min(truth.sum(), (~truth).sum()) < FOLDS:
        raise TopicsError(f"is_blocked must have at least {FOLDS} images on each side for {FOLDS} folds, "
                          f"got {int(truth.sum())} blocked of {len(truth)}")
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    return cross_val_predict(LogisticRegression(C=C, max_iter=2_000, random_state=seed), x, truth, cv=folds,
                             method="predict_proba")[:, 1]


def fit_moderation(
    vectors: np.ndarray,
    labels: np.ndarray | Sequence[int],
    blocked_class: str = DEFAULT_BLOCKED_CLASS,
    cost_false_positive: float = COST_FALSE_POSITIVE,
    cost_false_negative: float = COST_FALSE_NEGATIVE,
    C: float = DEFAULT_C,
    seed: int = 0,
    model_version: str | None = None,
) -> tuple[ModerationModel, dict[str, float]]:
    """Train on all of ``vectors`` with the threshold ``choose_threshold`` picks on out-of-fold scores.

    What a deployment wants: one model, and a threshold set by the costs on images the
    model did not see. ``python -m visual_search.topics fit-moderation`` runs this.

    Returns:
        ``(model, chosen)``: the model with its threshold, and ``choose_threshold``'s dict.

    Raises:
        TopicsError: any bad argument (see ``train_moderation`` and ``choose_threshold``).
    """
    model = train_moderation(vectors, labels, blocked_class, C=C, seed=seed, model_version=model_version)
    c_fp = _cost(cost_false_positive, "cost_false_positive")
    c_fn = _cost(cost_false_negative, "cost_false_negative")
    truth = np.asarray(labels) == class_label(blocked_class)
    chosen = choose_threshold(out_of_fold_scores(vectors, truth, C, seed), truth, c_fp, c_fn)
    return model.with_threshold(chosen["threshold"]), chosen


# ---- the measurement -------------------------------------------------------------------------------


def _held_out(flagged: np.ndarray, truth: np.ndarray, c_fp: float, c_fn: float) -> dict[str, float]:
    pr = precision_recall(flagged, truth)
    cost = c_fp * pr["fp"] + c_fn * pr["fn"]
    return {**pr, "cost": cost, "cost_per_1000": 1000 * cost / len(truth)}


def evaluate_moderation(
    blocked_class: str = DEFAULT_BLOCKED_CLASS,
    cost_false_positive: float = COST_FALSE_POSITIVE,
    cost_false_negative: float = COST_FALSE_NEGATIVE,
    C: float = DEFAULT_C,
    seed: int = 0,
    encoder: Encoder | None = None,
    pixel_baseline: bool = True,
) -> dict:
    """Train the moderation classifier, choose its threshold by the costs, and measure it on held-out images.

    Fast mode trains on the committed sample's gallery (2,000 images) and measures on its
    queries (500, from the test split); full mode trains on the train split (60,000) and
    measures on the test split (10,000). Three thresholds are compared on the held-out images:
    0.5, ``bayes_threshold`` of the costs, and the one ``choose_threshold`` picks on out-of-fold
    training scores (``FOLDS``-fold, stratified, shuffled with ``seed``). The same classifier on
    raw pixels (``embed.raw_pixel_embeddings``) is the baseline: what the embedding buys.

    Args:
        blocked_class: the disallowed class (``DEFAULT_BLOCKED_CLASS`` says why Sandal).
        cost_false_positive: the cost of hiding a good image, > 0.
        cost_false_negative: the cost of showing a disallowed one, > 0.
        C: the logistic regression's inverse regularisation strength.
        seed: seeds the folds (and the solver).
        encoder: default the committed CNN (``load_pretrained()``).
        pixel_baseline: also fit the raw-pixel baseline (in full mode it is most of the run time).

    Returns:
        ``{"blocked_class", "mode", "n_train", "n_test", "blocked_share" (of the test images),
        "average_precision" (test), "out_of_fold_average_precision" (train),
        "thresholds": {"0.5", "bayes", "chosen"} (their values),
        "held_out": {the same three: {"precision", "recall", "tp", "fp", "fn", "tn", "cost", "cost_per_1000"}},
        "chosen_on_train": choose_threshold's dict (out-of-fold),
        "false_positives_by_class": {class name: good images hidden at the chosen threshold},
        "sweep": {"thresholds": SWEEP_THRESHOLDS, "precision": [...], "recall": [...]} (test),
        "pixels": {"average_precision", "precision", "recall"} at 0.5 (absent without ``pixel_baseline``),
        "costs": {"false_positive", "false_negative"}}``.
    """
    label = class_label(blocked_class)
    c_fp = _cost(cost_false_positive, "cost_false_positive")
    c_fn = _cost(cost_false_negative, "cost_false_negative")
    C = check_real(C, "C", low=0.0, high=1e9, low_open=True, error=TopicsError)
    seed = check_seed(seed, "seed", error=TopicsError)
    if not isinstance(pixel_baseline, (bool, np.bool_)):
        raise TopicsError(f"pixel_baseline must be True or False, got {pixel_baseline!r}")
    encoder = encoder_or_default(encoder)

    if config.is_fast():
        sample = data.load_sample()
        train_images, train_labels = sample.gallery_images, sample.gallery_labels
        test_images, test_labels = sample.query_images, sample.query_labels
    else:
        train_images, train_labels = data.load_fashion_mnist("train")
        test_images, test_labels = data.load_fashion_mnist("test")
    train_x = embed(encoder, train_images, progress=False)
    test_x = embed(encoder, test_images, progress=False)
    train_truth, test_truth = train_labels == label, test_labels == label

    model = train_moderation(train_x, train_labels, blocked_class, C=C, seed=seed, model_version=encoder.version)
    out_of_fold = out_of_fold_scores(train_x, train_truth, C, seed)
    chosen = choose_threshold(out_of_fold, train_truth, c_fp, c_fn)
    thresholds = {"0.5": 0.5, "bayes": bayes_threshold(c_fp, c_fn), "chosen": chosen["threshold"]}

    test_scores = model.score(test_x)
    held_out = {name: _held_out(test_scores >= t, test_truth, c_fp, c_fn) for name, t in thresholds.items()}
    hidden = (test_scores >= thresholds["chosen"]) & ~test_truth
    by_class = {data.CLASS_NAMES[c]: int(n) for c, n in enumerate(np.bincount(test_labels[hidden], minlength=len(data.CLASS_NAMES))) if n}
    sweep = [precision_recall(test_scores >= t, test_truth) for t in SWEEP_THRESHOLDS]
    report = {
        "blocked_class": blocked_class,
        "mode": "fast" if config.is_fast() else "full",
        "n_train": len(train_x),
        "n_test": len(test_x),
        "blocked_share": float(test_truth.mean()),
        "average_precision": float(average_precision_score(test_truth, test_scores)),
        "out_of_fold_average_precision": float(average_precision_score(train_truth, out_of_fold)),
        "thresholds": thresholds,
        "held_out": held_out,
        "chosen_on_train": chosen,
        "false_positives_by_class": by_class,
        "sweep": {"thresholds": list(SWEEP_THRESHOLDS), "precision": [r["precision"] for r in sweep], "recall": [r["recall"] for r in sweep]},
        "costs": {"false_positive": c_fp, "false_negative": c_fn},
    }
    if pixel_baseline:
        pixels = train_moderation(raw_pixel_embeddings(train_images), train_labels, blocked_class, C=C, seed=seed)
        pixel_scores = pixels.score(raw_pixel_embeddings(test_images))
        pr = precision_recall(pixel_scores >= 0.5, test_truth)
        report["pixels"] = {"average_precision": float(average_precision_score(test_truth, pixel_scores)),
                            "precision": pr["precision"], "recall": pr["recall"]}
    return report


__all__ = [
    "DEFAULT_BLOCKED_CLASS",
    "DEFAULT_THRESHOLD",
    "DEFAULT_C",
    "COST_FALSE_POSITIVE",
    "COST_FALSE_NEGATIVE",
    "ModerationDecision",
    "ModerationModel",
    "class_label",
    "train_moderation",
    "save_moderation",
    "out_of_fold_scores",
    "fit_moderation",
    "load_moderation",
    "confusion",
    "precision_recall",
    "precision_recall_sweep",
    "bayes_threshold",
    "choose_threshold",
    "evaluate_moderation",
]
