"""One exception family for the whole library.

Every error the library raises on purpose is a ``VisualSearchError``, which is a
``ValueError``: bad input is a value problem, and code that already catches
``ValueError`` keeps working. Each module family has its own subclass, so a caller
can catch exactly what it expects, and the HTTP layer can map the whole family to
a 4xx response with one handler::

    try:
        index.search(q, k)
    except VisualSearchError as err:   # any bad input, from any module
        return {"detail": str(err)}, 400

Messages name the input (the argument, the file, the row) and what is wrong with it.
This module is a leaf: it imports nothing from the library, so every module can use it.
"""

from __future__ import annotations


class VisualSearchError(ValueError):
    """Base of every exception the library raises on purpose."""


class DataError(VisualSearchError):
    """A dataset file is missing, corrupt, or not what it claims to be."""


class ImageError(VisualSearchError):
    """An image file or array that cannot be used, with the reason in the message."""


class ModelError(VisualSearchError):
    """A bad encoder name or argument, a checkpoint that is damaged or does not fit, or weights that cannot be had."""


class ClickLogError(VisualSearchError):
    """A click log or click-simulation parameter that cannot be used."""


class ContrastiveError(VisualSearchError):
    """Bad input to a contrastive loss or data builder: shapes, values, or parameters."""


class TrainError(VisualSearchError):
    """Bad training arguments or a checkpoint that cannot be resumed."""


class VectorIndexError(VisualSearchError):
    """Bad input to an index (shape, dtype, NaN, ids, k, parameters), or a bad index file."""


class MetricError(VisualSearchError):
    """Invalid input to a metric: a bad k, grade, hit matrix, or mismatched query lists."""


class ServiceError(VisualSearchError):
    """A bad request to the serving system: a field, a box, an id, a query id (HTTP 422 unless a subclass says otherwise)."""


class NotFoundError(ServiceError):
    """An image id or query id the service does not know, or may not show to this user (HTTP 404)."""


class PayloadTooLargeError(ServiceError):
    """An upload above the service's size limit, refused before it is read in full (HTTP 413)."""


class OnlineError(VisualSearchError):
    """Bad input to online evaluation: counts, rates, variants, rankings, click-model parameters or log rows."""


class ScaleError(VisualSearchError):
    """Bad input to the scaling tools: a capacity-plan parameter, a shard count, a job's files, or missing measurements."""


class TopicsError(VisualSearchError):
    """Bad input to one of chapter 11's talking points (moderation, text search, smart crop, metadata, active learning, co-click graph)."""


__all__ = [
    "VisualSearchError",
    "DataError",
    "ImageError",
    "ModelError",
    "ClickLogError",
    "ContrastiveError",
    "TrainError",
    "VectorIndexError",
    "MetricError",
    "ServiceError",
    "NotFoundError",
    "PayloadTooLargeError",
    "OnlineError",
    "ScaleError",
    "TopicsError",
]
