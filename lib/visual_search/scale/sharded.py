"""Sharded search: S indexes over a partition of the ids, one query fanned out to all, an exact top-k merge.

    from visual_search.scale import ShardedIndex
    with ShardedIndex("ivf", 64, n_shards=4, backend="ray", nlist=256, deadline_s=0.5) as index:
        index.train(x); index.add(x)
        D, I = index.search(q, 10)                      # the index interface
        info = index.search_with_info(q, 10)            # ... and whether every shard answered

How it works:

* **Partition by id.** Vector ``id`` lives on shard ``shard_of(id, S)``, a splitmix64 hash of the
  id modulo S, so consecutive ids (the default ones) spread evenly, and ``remove(ids)`` knows
  where each id lives without asking every shard.
* **Shared training.** ``train`` trains *one* index of the shard kind and gives every shard a copy
  of that trained state (the same IVF centroids, the same PQ codebooks). Each shard then files its
  vectors into the same lists as the unsharded index would, and a query probes the same ``nprobe``
  lists on every shard. Training each shard on its own subset would give S different quantizers,
  results that depend on S, and S times the training cost.
* **Exact merge.** Each shard returns its own top-k; the global top-k *of what the shards return*
  is among the union of those (a vector not in its shard's top k has k better ones on that shard
  alone), and ``kernels.merge_topk`` picks it. The merge itself loses nothing. What that means
  for the answer depends on the kind:

  - *Equal to the unsharded answer* (up to float ties) when whether a vector is a candidate, and
    its score, depend only on the query, the vector and the shared training: the exact kinds
    (``exact``, ``kdtree``, Faiss ``Flat``, the scikit-learn trees) and the IVF/PQ family with
    shared training (``ivf``, ``pq``, ``ivfpq``, Faiss ``IVF...``/``PQ...`` factories without a
    refine stage). The union of what the shards scan is then what the unsharded index scans.
  - *Not equal* when the candidates depend on the other vectors stored with them: ``scann`` (each
    shard re-scores only its own ``pre_reorder_num_neighbors`` candidates), HNSW (Faiss ``HNSW...``:
    a separate graph per shard), ``annoy`` (a separate forest per shard), ``lsh`` with
    ``rerank > 0`` and Faiss refine stages (``...,RFlat``: each shard re-ranks its own shortlist). The merged answer is then the exact top-k of the shards'
    approximate answers; its recall can be lower or higher than the unsharded index's, and has
    to be measured, not assumed.
* **Deadlines.** ``search(..., deadline_s=0.2)`` returns after at most 0.2 s with the shards that
  answered; the answer is then *partial*, which the caller learns from ``stats`` or from
  ``search_with_info``. A straggler or a dead shard costs recall on that query, not latency.
* **Backends.** ``"local"``: the shards are in-process indexes, each searched by its own thread,
  started for that call (NumPy and Faiss release the GIL), no Ray involved. A straggler holds only
  its own thread of its own call, so it never delays another shard or a later call. Writes are
  computed on copies of the affected shards and committed with one assignment, as ``BaseIndex``
  does: a search, ``len`` or ``shard_sizes`` sees the index before or after a write, never half of
  one, and a failed write changes nothing. ``"ray"``: each shard is a Ray actor that *loads its
  index from its own file* under ``shard_dir`` and rewrites that file (atomically) after every
  write. Actors are created with ``max_restarts=-1``: when one dies, Ray starts it again, its
  ``__init__`` reloads the file, and it comes back with its data. Each actor applies its part of a
  write atomically, but there is no atomic commit across actors: a search that overlaps a write
  can see some shards before it and some after.

Fault injection for tests and chapter 10: ``kill_shard(i)`` (a real actor death, restarted by
Ray) and ``slow_shard(i, seconds)`` (a straggler; ``0`` clears it).

Ray is imported only when a ``backend="ray"`` index is made: importing this module costs nothing.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visual_search._checks import check_int, check_real
from visual_search.errors import ScaleError, VectorIndexError, VisualSearchError
from visual_search.index.base import BaseIndex
from visual_search.index.io import load_index
from visual_search.index.kernels import merge_topk
from visual_search.index.registry import build_index
from visual_search.index.validation import as_float32_matrix, check_k, check_model_version, check_new_ids, check_remove_ids

BACKENDS = ("local", "ray")
MAX_SHARDS = 1024
#: The constructor options ``ShardedIndex.load`` accepts (the rest comes from the manifest).
LOAD_OPTIONS = ("deadline_s", "shard_dir", "address", "actor_cpus", "write_timeout_s", "threads")
#: The manifest ``save`` writes next to the shard files.
MANIFEST = "sharded.json"
MANIFEST_FORMAT = 1

_U64 = np.uint64


def shard_of(ids: Any, n_shards: int) -> np.ndarray:
    """The shard each id lives on: ``splitmix64(id) mod n_shards``.

    splitmix64 (Steele, Lea and Flood; the finaliser of Java's SplittableRandom) is a bijection
    on 64-bit integers whose output bits each depend on all input bits, so consecutive ids, ids
    that are multiples of S, or ids with a common prefix all spread evenly over the shards
    (``id mod S`` would put every even id on the even shards). It is a pure function of the id,
    so any process routes an id to the same shard without a lookup table.

    Args:
        ids: non-negative integer ids, any shape.
        n_shards: the number of shards, 1..1024.

    Returns:
        int64 array of the same shape, values in ``0..n_shards-1``.

    Raises:
        ScaleError: ids that are not integers or are negative, or a bad shard count.
    """
    n_shards = _check_n_shards(n_shards)
    arr = np.asarray(ids)
    if arr.size and arr.dtype.kind not in "iu":
        raise ScaleError(f"shard_of: ids must be integers, got dtype {arr.dtype}")
    if arr.size and arr.dtype.kind == "i" and arr.min() < 0:
        raise ScaleError(f"shard_of: ids must be non-negative, got {int(arr.min())}")
    # At least 1-d: uint64 *array* arithmetic wraps modulo 2**64 silently, which is what the hash
    # needs; a 0-d array would fall back to NumPy scalar arithmetic, which warns on the wrap.
    z = np.atleast_1d(arr).astype(_U64)
    with np.errstate(over="ignore"):
        z = z + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        z = z ^ (z >> _U64(31))
    return (z % _U64(n_shards)).astype(np.int64).reshape(arr.shape)


def _check_n_shards(n_shards: Any) -> int:
    return check_int(n_shards, "n_shards", low=1, high=MAX_SHARDS, error=ScaleError)


def _check_deadline(deadline_s: Any, name: str = "deadline_s") -> float | None:
    """None (wait for every shard) or a positive number of seconds, at most one hour."""
    if deadline_s is None:
        return None
    return check_real(deadline_s, name, low=0.0, high=3600.0, low_open=True, error=ScaleError)


@dataclass(frozen=True)
class ShardedResult:
    """One sharded search: the merged answer and how complete it is.

    Attributes:
        D, I: the merged ``(scores, ids)``, ``[nq, min(k, len(index))]``, best first, padded with
            id -1 (and the worst score) where the shards that answered hold too few.
        partial: True when some non-empty shard did not answer (deadline passed, or it died).
        missing_shards: those shards, in order.
        shards_answered: how many shards answered.
        shards_searched: how many shards were asked (the non-empty ones).
        shard_ms: per shard, milliseconds from the fan-out to its answer as the caller saw it
            (None for a shard that did not answer or holds nothing).
        elapsed_ms: the whole call.
        errors: shard -> why it did not answer, for shards that failed rather than ran late.
    """

    D: np.ndarray
    I: np.ndarray  # noqa: E741  (the Faiss name)
    partial: bool
    missing_shards: list[int]
    shards_answered: int
    shards_searched: int
    shard_ms: list[float | None]
    elapsed_ms: float
    errors: dict[int, str] = field(default_factory=dict)

    def stats(self) -> dict[str, Any]:
        """Everything but the arrays, as the dict ``search(stats=...)`` receives."""
        return {
            "partial": self.partial, "missing_shards": list(self.missing_shards), "shards_answered": self.shards_answered,
            "shards_searched": self.shards_searched, "shard_ms": list(self.shard_ms), "elapsed_ms": self.elapsed_ms,
            "errors": dict(self.errors),
        }


# ------------------------------------------------------------------------------------- the Ray actor
def _reload_hold_path(path: Path) -> Path:
    """The marker ``kill_shard(reload_delay_s=...)`` leaves beside a shard file: its restart waits that long."""
    return path.with_name(path.name + ".reload-hold")


class _ShardActor:
    """One shard on Ray: an index loaded from ``path``, rewritten there (atomically) after every write.

    Ray re-runs ``__init__`` with the same arguments when it restarts a dead actor, so the
    restarted shard reloads its file and has exactly the data of its last completed write.
    Runs with ``max_concurrency > 1`` so searches (the index is safe for concurrent reads),
    a ``set_delay`` and writes (serialised by a lock) never wait behind a sleeping straggler.
    """

    def __init__(self, path: str, shard: int) -> None:
        self.path = Path(path)
        self.shard = shard
        hold = _reload_hold_path(self.path)
        if hold.exists():  # left by kill_shard(reload_delay_s=...): reload as slowly as a large shard file would
            seconds = float(hold.read_text())
            hold.unlink(missing_ok=True)
            time.sleep(seconds)
        self.index: BaseIndex = load_index(self.path)
        self.started = time.time()
        self.delay_s = 0.0
        self.lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        """Who and what this actor is: pid, start time, vectors held (used by tests to see a reload)."""
        return {"shard": self.shard, "pid": os.getpid(), "started": self.started, "n": len(self.index), "path": str(self.path)}

    def search(self, q: np.ndarray, k: int, params: dict | None, model_version: str | None) -> tuple[np.ndarray, np.ndarray]:
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.index.search(q, k, params=params, model_version=model_version)

    def set_delay(self, seconds: float) -> None:
        self.delay_s = float(seconds)

    def crash(self) -> None:
        """Exit the process at once, as a crash would (no clean-up): Ray sees the actor die and restarts it."""
        os._exit(1)

    def _write(self, change: Callable[[BaseIndex], Any]) -> Any:
        """Apply ``change`` and rewrite the file; if the file cannot be written, undo the change."""
        with self.lock:
            before = self.index._state
            out = change(self.index)
            try:
                self.index.save(self.path)
            except BaseException:
                self.index._state = before
                raise
            return out

    def add(self, x: np.ndarray, ids: np.ndarray, model_version: str | None) -> int:
        return self._write(lambda index: len(index.add(x, ids, model_version=model_version)))

    def remove(self, ids: np.ndarray) -> int:
        return self._write(lambda index: index.remove(ids))

    def undo_add(self, ids: np.ndarray, unname: bool) -> int:
        """Take back an add that failed elsewhere: remove ``ids`` (idempotent: absent ids are ignored);
        ``unname``: the add was the one meant to name the model, so the shard had none before it."""

        def undo(index: BaseIndex) -> int:
            n = index.remove(ids)
            if unname:
                index.model_version = None
            return n

        return self._write(undo)

    def replace(self, blob: bytes) -> int:
        """Become the index saved in ``blob`` (a trained, empty index after ``train``)."""
        with self.lock:
            tmp = self.path.with_name(self.path.name + ".incoming")
            tmp.write_bytes(blob)
            index = load_index(tmp)
            os.replace(tmp, self.path)
            self.index = index
            return len(index)

    def ids(self) -> np.ndarray:
        return np.array(self.index.ids)

    def memory_bytes(self) -> int:
        return self.index.memory_bytes()

    def save_to(self, path: str) -> str:
        with self.lock:
            return str(self.index.save(path))


_REMOTE_ACTOR = None


def _remote_actor_class(ray):
    global _REMOTE_ACTOR
    if _REMOTE_ACTOR is None:
        _REMOTE_ACTOR = ray.remote(_ShardActor)
    return _REMOTE_ACTOR


def _index_bytes(index: BaseIndex) -> bytes:
    """``index`` as the bytes of its file (the one serialisation every kind has)."""
    with tempfile.TemporaryDirectory(prefix="vs-shard-") as tmp:
        path = Path(tmp) / "index.vsindex"
        index.save(path)
        return path.read_bytes()


def _fork(index: BaseIndex) -> BaseIndex:
    """A shallow copy of ``index`` to write to instead of it.

    ``BaseIndex`` writes are copy-on-write: ``add`` and ``remove`` build a new ``_state`` dict of
    new arrays (the Faiss kind clones its Faiss index first, ScaNN reloads its searcher) and
    assign it, never mutating the arrays they were given. A write to the fork therefore leaves
    the original exactly as it was, and ``model_version``, an attribute, is the fork's own. Only
    the write lock must not be shared.
    """
    fork = copy.copy(index)
    fork._write_lock = threading.Lock()
    return fork


def _copies(index: BaseIndex, n: int) -> list[BaseIndex]:
    """``n`` independent copies of ``index`` (through its file, so every kind, Faiss included, works)."""
    with tempfile.TemporaryDirectory(prefix="vs-shard-") as tmp:
        path = Path(tmp) / "index.vsindex"
        index.save(path)
        return [load_index(path) for _ in range(n)]


# ------------------------------------------------------------------------------------ ShardedIndex
class ShardedIndex:
    """S indexes of one kind over a hash partition of the ids, behind the index interface.

    Args:
        kind: the shard index kind (``"exact"``, ``"ivf"``, ``"faiss"``, ...; see ``build_index``).
        dim: vector dimension.
        n_shards: S, 1..1024.
        backend: ``"local"`` (in-process shards, no Ray) or ``"ray"`` (one Ray actor per shard).
        metric: ``"l2"``, ``"ip"`` or ``"cosine"``.
        **params: the shard kind's parameters (e.g. ``nlist=256``), passed to ``build_index``
            for each shard and checked here, before anything starts.
        deadline_s: default deadline of ``search`` in seconds (None: wait for every shard).
        model_version: the embedding model of the vectors (see ``build_index``).
        shard_dir: (ray) where each shard's file lives; default a new temporary folder, removed
            by ``close``. On a cluster this must be a folder every node sees. A new index writes
            fresh (empty) shard files there; reopen saved data with ``ShardedIndex.load``, and
            give two live indexes two folders.
        address: (ray) the cluster to join (``ray_runtime.start``); None: a local Ray.
        actor_cpus: (ray) the CPU share each actor reserves; the default 0 lets 8 shards run on
            a 2-CPU local Ray (they then share the cores, as threads would).
        write_timeout_s: (ray) how long a write waits for the shards before raising.
        threads: (local) at most this many threads search the shards in one call (default: one
            per non-empty shard). Each call starts its own threads, so a straggler never holds up
            another call; with fewer threads than shards it can hold up, in its own call, the
            shards queued behind it.

    Raises:
        ScaleError: a bad shard count, backend, deadline or option.
        VectorIndexError: an unknown kind or a bad kind parameter.
    """

    def __init__(
        self,
        kind: str,
        dim: int,
        n_shards: int,
        backend: str = "local",
        metric: str = "l2",
        *,
        deadline_s: float | None = None,
        model_version: str | None = None,
        shard_dir: str | os.PathLike | None = None,
        address: str | None = None,
        actor_cpus: float = 0.0,
        write_timeout_s: float = 120.0,
        threads: int | None = None,
        _existing: Sequence[BaseIndex] | None = None,
        **params: Any,
    ) -> None:
        self.n_shards = _check_n_shards(n_shards)
        if backend not in BACKENDS:
            raise ScaleError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.deadline_s = _check_deadline(deadline_s)
        self.write_timeout_s = check_real(write_timeout_s, "write_timeout_s", low=0.0, low_open=True, error=ScaleError)
        actor_cpus = check_real(actor_cpus, "actor_cpus", low=0.0, high=64.0, error=ScaleError)
        threads = check_int(threads, "threads", low=1, high=256, error=ScaleError, allow_none=True)
        # The template: an index of the shard kind that validates kind, dim, metric and params now,
        # validates search params per call, and after ``train`` holds the shared trained state.
        self._template = build_index(kind, dim, metric, model_version=model_version, **params)
        self.kind, self.dim, self.metric = self._template.kind, self._template.dim, self._template.metric
        self._params = dict(params)
        self.model_version = self._template.model_version
        self.is_trained = self._template.is_trained
        self._write_lock = threading.Lock()
        self._closed = False
        self._delays = [0.0] * self.n_shards  # local fault injection (ray: kept in the actors)
        self._threads = threads
        # The committed shards (local) and the driver's record of each actor's ids (ray): tuples,
        # replaced whole by every write (one assignment), read once by every search.
        self._shards: tuple[BaseIndex, ...] = ()
        self._actors: list[Any] = []
        self._shard_ids: tuple[np.ndarray, ...] = ()
        self._own_dir = False
        if backend == "local":
            self._shards = tuple(_existing) if _existing is not None else tuple(_copies(self._template, self.n_shards))
        else:
            self._start_actors(shard_dir, address, actor_cpus, _existing)

    # ------------------------------------------------------------------------ construction (ray)
    def _shard_path(self, i: int) -> Path:
        return self.shard_dir / f"shard-{i:04d}-of-{self.n_shards:04d}.vsindex"

    def _start_actors(self, shard_dir, address, actor_cpus: float, existing: Sequence[BaseIndex] | None) -> None:
        from visual_search.scale import ray_runtime

        if shard_dir is None:
            self.shard_dir = Path(tempfile.mkdtemp(prefix="vs-shards-"))
            self._own_dir = True
        else:
            self.shard_dir = Path(shard_dir)
            try:
                self.shard_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ScaleError(f"shard_dir {str(shard_dir)!r} cannot be created: {err}") from None
        try:
            # Every actor loads its index from its file, the first time as after a restart.
            blob = _index_bytes(self._template)
            for i in range(self.n_shards):
                if existing is not None:
                    existing[i].save(self._shard_path(i))
                else:
                    tmp = self._shard_path(i).with_suffix(".tmp")
                    tmp.write_bytes(blob)
                    os.replace(tmp, self._shard_path(i))
            ray = ray_runtime.start(address=address)
            self._ray = ray
            options = {"num_cpus": actor_cpus, "max_restarts": -1, "max_task_retries": 0, "max_concurrency": 4}
            cls = _remote_actor_class(ray)
            self._actors = [cls.options(**options).remote(str(self._shard_path(i)), i) for i in range(self.n_shards)]
            infos = self._ray_get([a.info.remote() for a in self._actors], "start")
            self._shard_ids = tuple(np.array(existing[i].ids) if existing is not None else np.empty(0, np.int64) for i in range(self.n_shards))
            for i, info in enumerate(infos):
                if info["n"] != len(self._shard_ids[i]):
                    raise ScaleError(f"shard {i}: its actor loaded {info['n']} vectors from {info['path']}, expected {len(self._shard_ids[i])}")
        except BaseException:
            self.close()  # stops the actors started so far, and removes a temporary shard_dir
            raise

    def _ray_get(self, refs: list, what: str, timeout_s: float | None = None) -> list:
        """``ray.get`` for writes and queries that must reach every shard; errors as the library's.

        ``timeout_s``: how long to wait (default ``write_timeout_s``).
        """
        ray = self._ray
        try:
            return ray.get(refs, timeout=self.write_timeout_s if timeout_s is None else timeout_s)
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, VisualSearchError):
                raise type(cause)(str(cause)) from None
            raise ScaleError(f"sharded {what} failed on a shard: {err}") from None
        except ray.exceptions.GetTimeoutError:
            raise ScaleError(f"sharded {what}: the shards did not answer within write_timeout_s={self.write_timeout_s:g}") from None
        except ray.exceptions.RayError as err:
            raise ScaleError(f"sharded {what} failed: a shard actor is unavailable ({type(err).__name__}: {err})") from None

    # ---------------------------------------------------------------------------------- the interface
    def __len__(self) -> int:
        return int(sum(self.shard_sizes()))

    def __repr__(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self._params.items())
        return (f"ShardedIndex({self.kind!r}, dim={self.dim}, n_shards={self.n_shards}, backend={self.backend!r}, "
                f"metric={self.metric!r}{params}; n={len(self) if not self._closed else '?'}{', closed' if self._closed else ''})")

    def __enter__(self) -> ShardedIndex:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def needs_training(self) -> bool:
        return self._template.needs_training

    @property
    def search_params(self) -> tuple[str, ...]:
        return tuple(self._template.search_params)

    def params(self) -> dict[str, Any]:
        """The shard kind's construction parameters (what ``save`` records)."""
        return self._template.params()

    @property
    def ids(self) -> np.ndarray:
        """Every stored id, shard by shard (a copy)."""
        self._check_open()
        parts = [s.ids for s in self._shards] if self.backend == "local" else list(self._shard_ids)  # one snapshot
        return np.concatenate([np.asarray(p, np.int64) for p in parts]) if parts else np.empty(0, np.int64)

    def shard_sizes(self, from_shards: bool = False) -> list[int]:
        """Vectors per shard.

        Args:
            from_shards: (ray) ask the actors themselves instead of the driver's record of what
                it wrote (equal unless an actor lost its data; the tests use it to see a reload).
        """
        self._check_open()
        if self.backend == "local":
            return [len(s) for s in self._shards]  # one snapshot of the committed shards
        if from_shards:
            return [info["n"] for info in self.shard_info()]
        return [len(ids) for ids in self._shard_ids]

    def shard_info(self) -> list[dict[str, Any]]:
        """(ray) Each actor's pid, start time, size and file: a restarted actor has a new pid."""
        self._need_ray("shard_info")
        return self._ray_get([a.info.remote() for a in self._actors], "shard_info")

    def memory_bytes(self) -> int:
        """Bytes the shards hold in memory, summed (each as its kind's ``memory_bytes``)."""
        self._check_open()
        if self.backend == "local":
            return int(sum(s.memory_bytes() for s in self._shards))
        return int(sum(self._ray_get([a.memory_bytes.remote() for a in self._actors], "memory_bytes")))

    def train(self, x: Any) -> ShardedIndex:
        """Train one index of the shard kind on ``x`` and give every shard that trained state.

        Shared training (rather than each shard training on its part) keeps the shards
        comparable: the same IVF centroids or PQ codebooks everywhere, so the merged answer is
        the answer of one unsharded index trained on ``x``. Returns ``self``.

        Raises:
            VectorIndexError: bad vectors, too few for the kind, or the index already holds vectors.
        """
        self._check_open()
        with self._write_lock:
            if self.needs_training and len(self):
                raise VectorIndexError(
                    f"the sharded {self.kind!r} index already holds {len(self)} vectors encoded with its current training; "
                    "build a new index to re-train"
                )
            template = _copies(self._template, 1)[0]
            template.train(x)  # validates x; nothing is shared until it succeeded
            if not self.needs_training:
                return self
            if self.backend == "local":
                self._shards = tuple(_copies(template, self.n_shards))
            else:
                blob = self._ray.put(_index_bytes(template))
                self._ray_get([a.replace.remote(blob) for a in self._actors], "train")
            self._template = template
            self.is_trained = True
        return self

    def _check_model(self, version: str | None, name: str) -> str | None:
        """``BaseIndex._check_model`` for the whole index: another model's vectors or queries are refused."""
        version = check_model_version(version, f"{name}: model_version")
        if version is not None and self.model_version is not None and version != self.model_version:
            raise VectorIndexError(
                f"{name} come from model {version!r}, but the index holds embeddings of model {self.model_version!r}; "
                "embed with the index's model, or build the index again with the new one"
            )
        return version

    def add(self, x: Any, ids: Any = None, model_version: str | None = None) -> ShardedIndex:
        """Store vectors, each on shard ``shard_of(id, S)``. Returns ``self``.

        Args:
            x: float ``[n, dim]``.
            ids: int ``[n]``, distinct, not stored yet (None: consecutive ids after the largest stored).
            model_version: the model that made ``x`` (see ``BaseIndex.add``): refused if the index
                holds another model's vectors; the first vectors added to an empty index without
                a model version name it, on every shard.

        Everything is checked before any shard changes, so a bad batch changes nothing. Local: the
        affected shards are written as copies and all committed with one assignment, so a search
        sees all of the batch or none of it, and a failure on any shard commits nothing (model
        versions included). Ray: if a shard fails (an actor dies mid-write, or times out), every
        shard that was sent its part is asked to take it back.

        Raises:
            VectorIndexError: bad vectors or ids, an untrained index, another model's vectors.
            ScaleError: (ray) a shard could not be written.
        """
        self._check_open()
        x = as_float32_matrix(x, "x", self.dim)
        model_version = self._check_model(model_version, "x")
        with self._write_lock:
            if not self.is_trained:
                raise VectorIndexError(f"{self.kind!r} index must be trained before add: call index.train(x) first")
            ids = check_new_ids(ids, len(x), self.ids)
            if len(x) == 0:
                return self
            # As BaseIndex.add: only the first vectors added to an empty index name its model.
            version = self.model_version
            if version is None and model_version is not None and len(self) == 0:
                version = model_version
            where = shard_of(ids, self.n_shards)
            parts = [(i, np.flatnonzero(where == i)) for i in range(self.n_shards)]
            parts = [(i, rows) for i, rows in parts if len(rows)]
            if self.backend == "local":
                shards = self._shards
                new = list(shards)
                for i, rows in parts:
                    fork = _fork(shards[i])
                    fork.add(x[rows], ids[rows], model_version=model_version)  # the shard's own checks apply too
                    new[i] = fork
                for i, shard in enumerate(new):  # every shard mirrors the index's model version
                    if shard.model_version != version:
                        if shard is shards[i]:
                            new[i] = shard = _fork(shard)
                        shard.model_version = version
                self._shards, self.model_version = tuple(new), version  # the commit (nothing before it is visible)
            else:
                self._ray_add(x, ids, parts, version)
        return self

    def _ray_add(self, x: np.ndarray, ids: np.ndarray, parts: list, version: str | None) -> None:
        """Send each shard its part; on any failure ask every shard that was sent one to take it back.

        ``version`` is the index's model version after this add. The shards are sent a version only
        when this add names the index's model (the index was empty and unnamed, so every shard
        was too): otherwise a shard that is empty could name itself while the index does not. The
        driver has checked ``model_version`` against the index's already.
        """
        ray = self._ray
        naming = self.model_version is None and version is not None
        shard_version = version if naming else None
        refs = {i: self._actors[i].add.remote(x[rows], ids[rows], shard_version) for i, rows in parts}
        failed: dict[int, BaseException] = {}
        end = time.monotonic() + self.write_timeout_s  # one timeout for the whole write, not one per shard
        for i, ref in refs.items():
            try:
                self._ray_get([ref], "add", timeout_s=max(0.0, end - time.monotonic()))
            except VisualSearchError as err:
                failed[i] = err
        if failed:
            # Every shard that was sent its part, the failed ones too: a shard whose add timed out
            # may still finish it later. The undo is idempotent (absent ids are ignored), waits for
            # an add already running on that actor (its writes hold one lock), and after a naming add
            # takes the name back: every shard's model version is then as it was. (An add that has
            # not even started when its undo arrives could still run after it: a threaded actor
            # does not promise to run tasks in order.)
            undo = [self._actors[i].undo_add.remote(ids[rows], naming) for i, rows in parts]
            try:
                ray.get(undo, timeout=self.write_timeout_s)
            except ray.exceptions.RayError:
                pass  # best effort; the error below says the add failed
            first = failed[min(failed)]
            if isinstance(first, VectorIndexError):  # the shard refused the data: the caller's error, as it is
                raise first
            raise ScaleError(f"sharded add failed on shard(s) {sorted(failed)} ({first}); every shard was asked to give its part back")
        record = list(self._shard_ids)
        for i, rows in parts:
            record[i] = np.concatenate([record[i], ids[rows]])
        self._shard_ids, self.model_version = tuple(record), version

    def remove(self, ids: Any) -> int:
        """Remove the vectors stored under ``ids`` (asking only the shards that hold them). Returns how many went.

        Local: all or nothing, committed with one assignment. Ray: each shard removes its part; if
        one fails, the driver still records what the others removed, then raises ``ScaleError``.
        """
        self._check_open()
        ids = check_remove_ids(ids)
        if not len(ids):
            return 0
        with self._write_lock:
            where = shard_of(ids, self.n_shards)
            parts = [(i, ids[where == i]) for i in range(self.n_shards) if (where == i).any()]
            if self.backend == "local":
                new, count = list(self._shards), 0
                for i, part in parts:
                    fork = _fork(new[i])
                    n = fork.remove(part)
                    if n:
                        new[i], count = fork, count + n
                if count:
                    self._shards = tuple(new)  # the commit
                return count
            refs = [(i, part, self._actors[i].remove.remote(part)) for i, part in parts]
            record, count, failed = list(self._shard_ids), 0, {}
            end = time.monotonic() + self.write_timeout_s
            for i, part, ref in refs:
                try:
                    count += int(self._ray_get([ref], "remove", timeout_s=max(0.0, end - time.monotonic()))[0])
                except VisualSearchError as err:
                    failed[i] = err
                    continue
                record[i] = record[i][~np.isin(record[i], part)]
            self._shard_ids = tuple(record)  # what the shards that answered removed
            if failed:
                first = failed[min(failed)]
                if isinstance(first, VectorIndexError):  # the shard refused (a kind that cannot remove): as it is
                    raise first
                raise ScaleError(f"sharded remove failed on shard(s) {sorted(failed)} ({first}); the other shards removed their part")
            return count

    def search(
        self,
        q: Any,
        k: int,
        params: dict[str, Any] | None = None,
        stats: Callable[[dict[str, Any]], Any] | None = None,
        deadline_s: float | None = None,
        model_version: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The merged top-k over all shards (see ``search_with_info`` for the arguments).

        Returns:
            ``(D, I)``: float32 scores and int64 ids, ``[nq, min(k, len(self))]``, best first. If the
            deadline passed before every shard answered, the rows hold the best of the shards that
            did (padded with -1), and ``stats`` receives ``partial=True`` and ``missing_shards``.
        """
        if stats is not None and not callable(stats):
            raise VectorIndexError(f"stats must be a callable that takes a dict (e.g. info.update), got {type(stats).__name__}")
        result = self.search_with_info(q, k, params=params, deadline_s=deadline_s, model_version=model_version)
        if stats is not None:
            stats(result.stats())
        return result.D, result.I

    def search_with_info(
        self,
        q: Any,
        k: int,
        params: dict[str, Any] | None = None,
        deadline_s: float | None = None,
        model_version: str | None = None,
    ) -> ShardedResult:
        """Fan the query batch out to every non-empty shard and merge their top-k exactly.

        Args:
            q: float ``[nq, dim]`` queries.
            k: results per query (capped at ``len(self)``).
            params: search knobs for this call (e.g. ``{"nprobe": 16}``), forwarded to every shard.
            deadline_s: return after at most this many seconds with the shards that answered
                (default: the index's ``deadline_s``; None waits for all).
            model_version: the model that made ``q``; refused if the index holds another model's vectors.

        Returns:
            A ``ShardedResult``: ``D``, ``I``, ``partial``, ``missing_shards``, per-shard times.

        Raises:
            VectorIndexError: bad queries, k or params, another model's queries, or an empty index.
            ScaleError: a bad deadline, or a closed index.
        """
        self._check_open()
        t0 = time.perf_counter()
        deadline = self.deadline_s if deadline_s is None else _check_deadline(deadline_s)
        q = as_float32_matrix(q, "queries", self.dim)
        k = check_k(k)
        settings = self._template._settings(params)  # validated here, once, with the kind's own checks
        model_version = self._check_model(model_version, "queries")
        # One snapshot for the whole call (local: the committed shards; ray: the driver's record).
        shards = self._shards
        sizes = [len(s) for s in shards] if self.backend == "local" else [len(ids) for ids in self._shard_ids]
        n = sum(sizes)
        if n == 0:
            raise VectorIndexError(f"the sharded {self.kind!r} index is empty: add vectors before searching")
        kk = min(k, n)
        asked = [i for i, size in enumerate(sizes) if size]
        if kk == 0 or len(q) == 0:
            empty = (np.empty((len(q), kk), np.float32), np.empty((len(q), kk), np.int64))
            return ShardedResult(*empty, False, [], len(asked), len(asked), [None] * self.n_shards, 0.0)
        shard_params = dict(params) if settings and params else None
        if self.backend == "local":
            answers, shard_ms, errors = self._fan_out_local(shards, asked, q, kk, shard_params, model_version, deadline, t0)
        else:
            answers, shard_ms, errors = self._fan_out_ray(asked, q, kk, shard_params, model_version, deadline, t0)
        parts = [answers[i] for i in asked if i in answers]
        larger = self.metric != "l2"
        if parts:
            D, I = merge_topk([p[0] for p in parts], [p[1] for p in parts], kk, larger_is_better=larger)  # noqa: E741
        else:
            D, I = np.empty((len(q), 0), np.float32), np.empty((len(q), 0), np.int64)  # noqa: E741
        if D.shape[1] < kk:  # only when shards are missing: keep the promised shape, padded
            pad = kk - D.shape[1]
            D = np.hstack([D, np.full((len(q), pad), -np.inf if larger else np.inf, np.float32)])
            I = np.hstack([I, np.full((len(q), pad), -1, np.int64)])  # noqa: E741
        missing = [i for i in asked if i not in answers]
        return ShardedResult(
            D=D.astype(np.float32, copy=False), I=I.astype(np.int64, copy=False), partial=bool(missing), missing_shards=missing,
            shards_answered=len(asked) - len(missing), shards_searched=len(asked), shard_ms=shard_ms,
            elapsed_ms=(time.perf_counter() - t0) * 1e3, errors=errors,
        )

    def _fan_out_local(self, shards, asked, q, k, params, model_version, deadline, t0):
        """Search ``shards`` (this call's snapshot) on threads started for this call.

        Each call has its own threads (daemons, one per asked shard unless ``threads`` says
        fewer): a straggler keeps only its own thread busy, and that thread ends when its search
        does, so it never holds up a healthy shard of this call or of any later or concurrent one.
        """
        delays = list(self._delays)
        answers: dict[int, tuple] = {}
        shard_ms: list[float | None] = [None] * self.n_shards

        def one(i: int):
            if delays[i]:
                time.sleep(delays[i])
            D, I = shards[i].search(q, k, params=params, model_version=model_version)  # noqa: E741
            return D, I, (time.perf_counter() - t0) * 1e3

        workers = min(self._threads or len(asked), len(asked))
        if deadline is None and workers == 1:  # nothing to wait for in parallel: search here
            for i in asked:
                D, I, ms = one(i)  # noqa: E741
                answers[i], shard_ms[i] = (D, I), ms
            return answers, shard_ms, {}
        todo = list(reversed(asked))  # popped from the end: in shard order
        results: dict[int, tuple[bool, Any]] = {}
        cond = threading.Condition()
        over = [False]  # the caller stopped waiting: start no more shards

        def worker() -> None:
            while True:
                with cond:
                    if over[0] or not todo:
                        return
                    i = todo.pop()
                try:
                    out = (True, one(i))
                except BaseException as err:  # noqa: BLE001 - handed to the caller below
                    out = (False, err)
                with cond:
                    results[i] = out
                    cond.notify_all()

        for _ in range(workers):
            threading.Thread(target=worker, name="shard-search", daemon=True).start()
        with cond:
            remaining = None if deadline is None else max(0.0, deadline - (time.perf_counter() - t0))
            cond.wait_for(lambda: len(results) == len(asked), timeout=remaining)
            over[0] = True
            got = dict(results)
        for i in asked:
            if i in got:
                ok, out = got[i]
                if not ok:
                    raise out  # a shard's VectorIndexError (e.g. bad params) is the caller's
                D, I, ms = out  # noqa: E741
                answers[i], shard_ms[i] = (D, I), ms
        return answers, shard_ms, {}

    def _fan_out_ray(self, asked, q, k, params, model_version, deadline, t0):
        ray = self._ray
        q_ref = ray.put(q) if q.nbytes > 100_000 else q  # a big batch: one copy in the object store, read by every shard
        refs = {self._actors[i].search.remote(q_ref, k, params, model_version): i for i in asked}
        answers: dict[int, tuple] = {}
        errors: dict[int, str] = {}
        shard_ms: list[float | None] = [None] * self.n_shards
        pending = list(refs)
        while pending:
            remaining = None if deadline is None else max(0.0, deadline - (time.perf_counter() - t0))
            ready, pending = ray.wait(pending, num_returns=1, timeout=remaining)
            if not ready:
                break  # the deadline passed: the rest are missing
            for ref in ready:
                i = refs[ref]
                try:
                    D, I = ray.get(ref)  # noqa: E741
                except ray.exceptions.RayTaskError as err:
                    cause = getattr(err, "cause", None)
                    if isinstance(cause, VisualSearchError):
                        raise type(cause)(str(cause)) from None
                    errors[i] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                    continue
                except ray.exceptions.RayError as err:  # the actor died or is restarting: this shard is missing
                    errors[i] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                    continue
                answers[i], shard_ms[i] = (D, I), (time.perf_counter() - t0) * 1e3
        return answers, shard_ms, errors

    # ------------------------------------------------------------------------------ fault injection
    def kill_shard(self, i: int, reload_delay_s: float = 0.0) -> None:
        """(ray) Kill shard ``i``'s actor, as a crash would: Ray restarts it, and it reloads its file.

        Searches meanwhile miss that shard (partial answers within their deadline); once the
        actor is back they are complete again. A course-sized shard reloads in milliseconds,
        so a restart can beat the next search's deadline and the outage is never seen;
        ``reload_delay_s`` makes the restarted actor wait that long before it reloads, as a
        shard of billions of vectors would, so the partial answer is observed for sure.
        """
        self._need_ray("kill_shard")
        i = check_int(i, "shard", low=0, high=self.n_shards - 1, error=ScaleError)
        reload_delay_s = check_real(reload_delay_s, "reload_delay_s", low=0.0, high=3600.0, error=ScaleError)
        if reload_delay_s:
            _reload_hold_path(self._shard_path(i)).write_text(repr(reload_delay_s))
        ray = self._ray
        # The actor exits itself, and the call returns only once Ray has seen it die. ``ray.kill``
        # alone is asynchronous: a search sent right after it can still reach the live process.
        try:
            ray.get(self._actors[i].crash.remote(), timeout=30)
        except ray.exceptions.GetTimeoutError:
            raise ScaleError(f"shard {i} did not die within 30 s of being told to crash") from None
        except ray.exceptions.RayError:
            return  # the process is gone: Ray restarts it and it reloads its file

    def slow_shard(self, i: int, seconds: float) -> None:
        """Make shard ``i`` a straggler: it sleeps ``seconds`` before answering each search (0 clears it)."""
        self._check_open()
        i = check_int(i, "shard", low=0, high=self.n_shards - 1, error=ScaleError)
        seconds = check_real(seconds, "seconds", low=0.0, high=3600.0, error=ScaleError)
        if self.backend == "local":
            self._delays[i] = seconds
        else:
            self._ray_get([self._actors[i].set_delay.remote(seconds)], "slow_shard")

    def wait_until_complete(self, timeout_s: float = 30.0, probe: Any = None) -> float:
        """Wait until every shard answers a probe search (after a kill, once Ray restarted it).

        Returns:
            Seconds waited.

        Raises:
            ScaleError: some shard still does not answer after ``timeout_s``.
        """
        self._check_open()
        probe = np.zeros((1, self.dim), np.float32) if probe is None else probe
        t0 = time.perf_counter()
        while True:
            if len(self) == 0 or not self.search_with_info(probe, 1, deadline_s=max(0.5, min(5.0, timeout_s))).partial:
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout_s:
                raise ScaleError(f"some shard did not answer for {timeout_s:g} s")
            time.sleep(0.1)

    # ---------------------------------------------------------------------------------- files, close
    def save(self, directory: str | os.PathLike) -> Path:
        """Write a manifest and one index file per shard into ``directory``. Returns the directory."""
        self._check_open()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        names = [f"shard-{i:04d}-of-{self.n_shards:04d}.vsindex" for i in range(self.n_shards)]
        with self._write_lock:
            if self.backend == "local":
                for shard, name in zip(self._shards, names):
                    shard.save(directory / name)
            else:
                self._ray_get([a.save_to.remote(str(directory / name)) for a, name in zip(self._actors, names)], "save")
            manifest = {
                "format": MANIFEST_FORMAT, "kind": self.kind, "dim": self.dim, "metric": self.metric, "n_shards": self.n_shards,
                "params": self.params(), "model_version": self.model_version, "is_trained": self.is_trained, "shards": names,
                "sizes": self.shard_sizes(),
            }
            tmp = directory / (MANIFEST + ".tmp")
            tmp.write_text(json.dumps(manifest, indent=1))
            os.replace(tmp, directory / MANIFEST)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, backend: str = "local", **options: Any) -> ShardedIndex:
        """Read what ``save`` wrote; every id is checked to be on the shard ``shard_of`` says.

        Args:
            directory: the folder with the manifest and the shard files.
            backend: ``"local"`` or ``"ray"`` (any backend can load what any backend saved).
            **options: the constructor's runtime options: ``deadline_s``, ``shard_dir``, ``address``,
                ``actor_cpus``, ``write_timeout_s``, ``threads``. What the manifest fixes (``kind``,
                ``dim``, ``n_shards``, ``metric``, ``model_version`` and the kind's parameters) is
                what the shard files hold, so it cannot be given here.

        Raises:
            ScaleError: a missing or inconsistent manifest, an id on the wrong shard, or an option
                the manifest fixes or the constructor does not have (named in the message).
            VectorIndexError: a damaged shard file.
        """
        bad = sorted(set(options) - set(LOAD_OPTIONS))
        if bad:
            raise ScaleError(f"ShardedIndex.load: {bad} cannot be given: the manifest fixes kind, dim, n_shards, metric, model_version "
                             f"and the kind's parameters; the options are {list(LOAD_OPTIONS)}")
        directory = Path(directory)
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
        except (OSError, ValueError) as err:
            raise ScaleError(f"{directory}: no readable {MANIFEST} ({err})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise ScaleError(f"{directory / MANIFEST}: not a sharded-index manifest of format {MANIFEST_FORMAT}")
        n_shards = _check_n_shards(manifest.get("n_shards"))
        names = manifest.get("shards")
        if not isinstance(names, list) or len(names) != n_shards or not all(isinstance(n, str) and "/" not in n for n in names):
            raise ScaleError(f"{directory / MANIFEST}: 'shards' must list {n_shards} file names")
        shards = [load_index(directory / name) for name in names]
        for i, shard in enumerate(shards):
            if (shard.kind, shard.dim, shard.metric) != (manifest.get("kind"), manifest.get("dim"), manifest.get("metric")):
                raise ScaleError(f"{directory / names[i]}: a {shard.kind!r} index of dim {shard.dim}, not what the manifest says")
            wrong = shard_of(shard.ids, n_shards) != i
            if wrong.any():
                raise ScaleError(f"{directory / names[i]}: id {int(shard.ids[wrong][0])} belongs on shard {int(shard_of(shard.ids[wrong][:1], n_shards)[0])}, not {i}")
        params = manifest.get("params") if isinstance(manifest.get("params"), dict) else {}
        index = cls(manifest["kind"], manifest["dim"], n_shards, backend, manifest["metric"], model_version=manifest.get("model_version"),
                    _existing=shards, **options, **params)
        if shards[0].is_trained and index.needs_training:
            # The template carries the shared training (for search-parameter checks and a later
            # ``train`` copy); emptied, so that it holds only what every shard shares.
            template = _copies(shards[0], 1)[0]
            try:
                template.remove(template.ids)
            except VectorIndexError:
                pass  # a kind that cannot remove: the template is used for checks only, and train refuses anyway
            index._template, index.is_trained = template, True
        return index

    def close(self) -> None:
        """Stop the shard actors (ray) or the search threads (local); remove a temporary shard_dir. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for actor in self._actors:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone, or Ray already shut down
                pass
        # ``ray.kill`` is asynchronous: a call sent just after it can still reach the live
        # process. Return only once Ray reports every actor dead (bounded: 30 s in all), so
        # that "closed" means the shards' memory is free.
        t_end = time.monotonic() + 30.0
        for actor in self._actors:
            while time.monotonic() < t_end:
                try:
                    self._ray.get(actor.info.remote(), timeout=max(0.1, t_end - time.monotonic()))
                except Exception:  # noqa: BLE001 - RayActorError (dead), or Ray already shut down
                    break
                time.sleep(0.05)
        self._actors = []
        if self._own_dir:
            shutil.rmtree(self.shard_dir, ignore_errors=True)

    def _check_open(self) -> None:
        if self._closed:
            raise ScaleError("this ShardedIndex is closed")

    def _need_ray(self, what: str) -> None:
        self._check_open()
        if self.backend != "ray":
            raise ScaleError(f"{what} needs backend='ray' (shard actors); this index is backend={self.backend!r}")


# ------------------------------------------------------------------------------------ measurement
def measure_shard_latency(
    x: np.ndarray,
    q: np.ndarray,
    shard_counts: Sequence[int] = (1, 2, 4, 8),
    kind: str = "exact",
    backend: str = "ray",
    k: int = 10,
    metric: str = "l2",
    n_single: int = 200,
    repeats: int = 3,
    **params: Any,
) -> list[dict[str, Any]]:
    """Per-query latency and batch throughput of a sharded index against S, with its exactness.

    For each S: build a ``ShardedIndex`` over ``x`` and time (a) ``n_single`` queries sent one at
    a time (what a user waits for: p50 and p95 in ms), (b) the whole batch ``q`` in one call
    (queries per second, best of ``repeats``). The unsharded index of the same kind, built on the
    same training, answers the same queries beside it, and ``exact_match`` is the fraction of
    queries whose merged ids equal its ids (1.0 expected: the merge is exact).

    Args:
        x: float ``[N, dim]`` vectors (also the training set for kinds that need training).
        q: float ``[nq, dim]`` queries.
        shard_counts: the S values to measure.
        kind, metric, **params: the shard index (as for ``ShardedIndex``).
        backend: ``"ray"`` or ``"local"``.
        k: results per query.
        n_single: queries timed one at a time (the first ``n_single`` of ``q``).
        repeats: batch timings per S (the best is kept).

    Returns:
        One dict per S: ``n_shards, backend, kind, n, dim, k, p50_ms, p95_ms, mean_ms, batch_qps,
        unsharded_p50_ms, unsharded_batch_qps, exact_match, build_s``.
    """
    x = as_float32_matrix(x, "x")
    q = as_float32_matrix(q, "queries", x.shape[1])
    n_single = check_int(n_single, "n_single", low=1, error=ScaleError)
    repeats = check_int(repeats, "repeats", low=1, error=ScaleError)
    reference = build_index(kind, x.shape[1], metric, **params)
    reference.train(x)
    reference.add(x)
    single = q[:n_single]

    def latencies(search) -> np.ndarray:
        out = np.empty(len(single))
        for j in range(len(single)):
            t = time.perf_counter()
            search(single[j : j + 1])
            out[j] = (time.perf_counter() - t) * 1e3
        return out

    def best_qps(search) -> float:
        best = math.inf
        for _ in range(repeats):
            t = time.perf_counter()
            search(q)
            best = min(best, time.perf_counter() - t)
        return len(q) / best

    ref_ids = reference.search(q, k)[1]
    ref_lat = latencies(lambda v: reference.search(v, k))
    ref_qps = best_qps(lambda v: reference.search(v, k))
    rows = []
    for s in shard_counts:
        t = time.perf_counter()
        with ShardedIndex(kind, x.shape[1], s, backend=backend, metric=metric, **params) as index:
            index.train(x)
            index.add(x)
            build_s = time.perf_counter() - t
            index.search(single[:5], k)  # warm-up: the first call to an actor pays for its imports
            lat = latencies(lambda v: index.search(v, k))
            qps = best_qps(lambda v: index.search(v, k))
            ids = index.search(q, k)[1]
        rows.append({
            "n_shards": int(s), "backend": backend, "kind": kind, "n": len(x), "dim": x.shape[1], "k": k,
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)), "mean_ms": float(lat.mean()),
            "batch_qps": float(qps), "unsharded_p50_ms": float(np.percentile(ref_lat, 50)), "unsharded_batch_qps": float(ref_qps),
            "exact_match": float((ids == ref_ids).all(axis=1).mean()), "build_s": build_s,
        })
    return rows


__all__ = ["BACKENDS", "MAX_SHARDS", "ShardedIndex", "ShardedResult", "measure_shard_latency", "shard_of"]
