"""Google's ScaNN behind the same interface: a k-means tree, anisotropic 4-bit codes, exact re-ordering.

ScaNN (Guo et al., "Accelerating Large-Scale Inference with Anisotropic Vector
Quantization", ICML 2020) is the third production library ``bench ann``
compares ours against, beside Faiss and Annoy. Its pipeline, built with
``scann.scann_ops_pybind.builder``:

1. **tree** (``num_leaves``, ``num_leaves_to_search``, ``training_sample_size``): k-means
   partitions the vectors into leaves; a query scores the nearest leaves only,
   like IVF's ``nlist`` / ``nprobe``.
2. **score_ah** (``dimensions_per_block``, ``anisotropic_quantization_threshold``):
   asymmetric hashing, ScaNN's product quantizer: 16 centres (4 bits) per block of
   ``dimensions_per_block`` dimensions, scored with SIMD lookup tables. The
   threshold turns on the anisotropic loss of the paper (None: plain k-means codes).
3. **reorder** (``reorder``): the best ``reorder`` candidates by code are re-scored
   exactly against the kept float32 vectors; 0 or None switches this off, and the
   scores are then the codes' approximations.

    index = build_index("scann", dim=64, num_leaves=1000, num_leaves_to_search=40, reorder=100)
    index.train(x).add(x)
    D, I = index.search(q, 10, params={"leaves_to_search": 80, "pre_reorder_num_neighbors": 200})
"""

from __future__ import annotations

import io
import math
import os
import re
import tempfile
from typing import Any

import numpy as np

from visual_search._checks import check_int, check_real, check_seed
from visual_search.errors import VectorIndexError
from visual_search.index.base import BaseIndex, State
from visual_search.index.registry import register
from visual_search.index.validation import MAX_ABS_VALUE, expect_array, positive_int

#: ScaNN's "lut16" hashing: 16 centres per block, so training needs at least 16 vectors.
CENTRES_PER_BLOCK = 16
#: Vectors per ``upsert`` call into ScaNN (its own batching; the result does not depend on it).
UPSERT_BATCH = 1024
#: ScaNN's datapoint indices are uint32.
MAX_VECTORS = 2**32 - 1
_SCANN_MEASURE = {"l2": "squared_l2", "ip": "dot_product", "cosine": "dot_product"}
_FILE_NAME = re.compile(r"^[a-z_]+\.(npy|pb|pbtxt)$")


def _scann():
    import scann  # imported lazily: only this kind needs it (and it loads a 20 MB extension)

    return scann.scann_ops_pybind


def _last_line(err: Exception) -> str:
    return str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__


@register
class ScannIndex(BaseIndex):
    """ScaNN's tree + asymmetric hashing + re-ordering, trained once and then filled with ScaNN's own ``upsert``.

    Args:
        num_leaves: k-means leaves of the tree (1..1,000,000). ScaNN's tree needs at least
            one training vector per leaf, so an index trained on fewer vectors than this
            uses as many leaves as it has training vectors (``index.leaves`` says how many).
        num_leaves_to_search: the default for the search parameter ``leaves_to_search``:
            leaves scored per query (1..1,000,000; capped at ``index.leaves``).
        training_sample_size: at most this many training vectors are used, a seeded random
            sample of them when more are given (16..10,000,000).
        dimensions_per_block: dimensions per 4-bit code block (1..dim): ``dim / 2`` blocks
            at the usual 2, i.e. 2 bits per dimension; a dimension not divisible by it
            gets one shorter last block, as ScaNN's builder does.
        anisotropic_quantization_threshold: the paper's threshold T in (0, 1] for the
            anisotropic (score-aware) loss, 0.2 in the paper; None: plain k-means codes.
            It is meant for inner products on unit-norm data.
        reorder: candidates re-scored exactly per query, the default for the search
            parameter ``pre_reorder_num_neighbors`` (1..1,000,000); 0 or None: no
            re-ordering (scores are then the codes' estimates, and ScaNN keeps no float32
            copy of the vectors).
        seed: seeds the training sample and ScaNN's k-means (tree and codes).

    Search parameters (``search(q, k, params={...})``, ScaNN's ``search_batched`` names):
    ``leaves_to_search`` and ``pre_reorder_num_neighbors`` (refused when ``reorder`` is off).
    If the searched leaves hold fewer than ``k`` vectors, or fewer than ``k`` are re-ordered,
    the row is padded with id -1.

    Training. ``train(x)`` builds a ScaNN searcher on (a sample of) ``x``, which learns
    the tree and the codebooks, and keeps its files with one training vector left in
    (ScaNN cannot load a searcher that holds nothing when re-ordering is off: it has
    neither codes nor vectors then); the first ``add`` loads them, deletes that vector
    and upserts, as Faiss's IVF is trained and then filled. The tree starts from
    k-means++ (``random_init=False`` in ScaNN's builder): ScaNN's random initialisation
    is not reproducible (the same data and seed gave different trees from one build to
    the next, depending on what else the process held), k-means++ is. Sampling is done
    here with NumPy for the same reason. So the same data, parameters and seed give
    the same index and the same results.

    Writes. ScaNN changes a searcher in place (``upsert``, ``delete``) and copies one
    only through its files. So ``add`` and ``remove`` copy the current searcher
    (``serialize`` to a temporary directory, load it back), upsert or delete in the
    copy, and commit it with the new row map: a failed write changes nothing,
    searches running meanwhile keep the old searcher, and each write costs about one
    pass over the stored data (about 2 s for 60,000 x 784 with re-ordering): add in
    large batches. New vectors go into the trained tree with the trained codebooks;
    nothing is re-trained (ScaNN's ``rebalance`` is not called), so train on data like
    what will be added. ScaNN's ``delete`` moves its last vector into the freed slot;
    ``rows`` (ScaNN datapoint -> our row) follows those moves.

    One thread: every searcher is set to ``set_num_threads(1)``, is trained with one
    thread and searched with ``search_batched`` (not ``_parallel``), so timings compare
    with Faiss's on one thread, and builds are reproducible.

    Scores follow the package's convention: squared L2 for l2 (ScaNN's ``squared_l2``),
    inner products for ip and cosine (``dot_product``, on unit vectors for cosine).

    Logging: ScaNN's C++ code logs INFO lines (k-means progress) to stderr through absl.
    The PyPI wheel (1.4.2) exposes no switch for it: absl's minimum log level is a
    compile-time setting, and ``TF_CPP_MIN_LOG_LEVEL``, ``GLOG_minloglevel`` and
    ``ABSL_MIN_LOG_LEVEL`` were tried and change nothing. They are left alone rather than
    silenced by redirecting the process's stderr, which would hide everyone's errors.

    Saving keeps ScaNN's own serialised files (tree, codebooks, codes, vectors, config),
    so a loaded index gives identical results; ``load_index`` refuses files whose
    config is not the one these parameters build, whose asset paths leave the saved
    set, whose arrays (vectors, codes, leaf tokens) have the wrong shape or values, or
    whose size or row map disagree with the saved ids. The tree and codebook protobufs
    are read by ScaNN itself, which trusts them: the file's checksum guards them against
    damage, not against a deliberate forgery.
    """

    kind = "scann"
    needs_training = True
    search_params = ("leaves_to_search", "pre_reorder_num_neighbors")

    def __init__(
        self,
        dim: int,
        metric: str = "l2",
        num_leaves: int = 1000,
        num_leaves_to_search: int = 100,
        training_sample_size: int = 100_000,
        dimensions_per_block: int = 2,
        anisotropic_quantization_threshold: float | None = None,
        reorder: int | None = 100,
        seed: int = 0,
    ) -> None:
        self.num_leaves = positive_int(num_leaves, "scann: num_leaves", high=10**6)
        self.num_leaves_to_search = positive_int(num_leaves_to_search, "scann: num_leaves_to_search", high=10**6)
        self.training_sample_size = check_int(training_sample_size, "scann: training_sample_size", low=CENTRES_PER_BLOCK,
                                              high=10**7, error=VectorIndexError)
        self.dimensions_per_block = positive_int(dimensions_per_block, "scann: dimensions_per_block", high=2**20)
        if anisotropic_quantization_threshold is not None:
            anisotropic_quantization_threshold = check_real(
                anisotropic_quantization_threshold, "scann: anisotropic_quantization_threshold (or None for plain k-means codes)",
                low=0, high=1, low_open=True, error=VectorIndexError)
        self.anisotropic_quantization_threshold = anisotropic_quantization_threshold
        if reorder is not None and not (isinstance(reorder, (int, np.integer)) and not isinstance(reorder, bool) and reorder == 0):
            reorder = check_int(reorder, "scann: reorder (or 0 / None for no re-ordering)", low=1, high=10**6, error=VectorIndexError)
        self.reorder = reorder or None
        self.seed = check_seed(seed, "scann: seed", error=VectorIndexError)
        super().__init__(dim, metric)
        if self.dimensions_per_block > self.dim:
            raise VectorIndexError(f"scann: dimensions_per_block must be at most dim={self.dim}, got {self.dimensions_per_block}")
        self._check_search_params({"leaves_to_search": self.num_leaves_to_search, "pre_reorder_num_neighbors": self.reorder})

    # The stored search defaults, under ScaNN's search-time names.
    @property
    def leaves_to_search(self) -> int:
        return self.num_leaves_to_search

    @property
    def pre_reorder_num_neighbors(self) -> int | None:
        return self.reorder

    @property
    def leaves(self) -> int:
        """The leaves the trained tree has (``num_leaves``, or fewer when trained on fewer vectors); 0 untrained."""
        return int(self._state["leaves"])

    def params(self) -> dict:
        return {
            "num_leaves": self.num_leaves, "num_leaves_to_search": self.num_leaves_to_search,
            "training_sample_size": self.training_sample_size, "dimensions_per_block": self.dimensions_per_block,
            "anisotropic_quantization_threshold": self.anisotropic_quantization_threshold,
            "reorder": self.reorder, "seed": self.seed,
        }

    def _check_search_params(self, settings: dict[str, Any]) -> dict[str, Any]:
        leaves = positive_int(settings["leaves_to_search"], "scann: search parameter leaves_to_search", high=10**6)
        pre = settings["pre_reorder_num_neighbors"]
        if self.reorder is None:
            if pre is not None:
                raise VectorIndexError(
                    f"scann: search parameter pre_reorder_num_neighbors={pre!r} needs re-ordering, which this index "
                    "has switched off (reorder=None); build it with reorder > 0"
                )
        else:
            pre = positive_int(pre, "scann: search parameter pre_reorder_num_neighbors", high=10**6)
        return {"leaves_to_search": leaves, "pre_reorder_num_neighbors": pre}

    # ---------------------------------------------------------------- ScaNN config
    def _config(self, leaves: int, sample: int) -> str:
        """ScaNN's text config for these parameters, ``leaves`` leaves and ``sample`` training vectors, seeded."""
        from google.protobuf import text_format  # ScaNN's own dependency: its configs are protobufs
        from scann.proto import scann_pb2

        builder = _scann().builder(np.empty((0, self.dim), np.float32), 10, _SCANN_MEASURE[self.metric])
        builder = builder.tree(num_leaves=leaves, num_leaves_to_search=min(self.num_leaves_to_search, leaves),
                               training_sample_size=sample, random_init=False)
        threshold = math.nan if self.anisotropic_quantization_threshold is None else self.anisotropic_quantization_threshold
        builder = builder.score_ah(self.dimensions_per_block, anisotropic_quantization_threshold=threshold, training_sample_size=sample)
        if self.reorder is not None:
            builder = builder.reorder(self.reorder)
        config = text_format.Parse(builder.create_config(), scann_pb2.ScannConfig())
        config.partitioning.clustering_seed = self.seed
        config.hash.asymmetric_hash.clustering_seed = self.seed
        config.hash.asymmetric_hash.sampling_seed = self.seed
        return text_format.MessageToString(config)

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except (RuntimeError, ValueError) as err:
            raise VectorIndexError(f"scann: {what} failed: {_last_line(err)}") from None

    @staticmethod
    def _one_thread(searcher):
        searcher.set_num_threads(1)
        return searcher

    @staticmethod
    def _files(searcher) -> dict[str, bytes]:
        """ScaNN's serialised files of ``searcher``, by name (relative asset paths: the files can move)."""
        with tempfile.TemporaryDirectory(prefix="scann-") as folder:
            searcher.serialize(folder, True)
            out = {}
            for name in sorted(os.listdir(folder)):
                with open(os.path.join(folder, name), "rb") as f:
                    out[name] = f.read()
            return out

    def _load(self, files: dict[str, bytes]):
        """A new searcher from serialised files (ScaNN copies a searcher only through its files)."""
        with tempfile.TemporaryDirectory(prefix="scann-") as folder:
            for name, blob in files.items():
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(blob)
            return self._one_thread(_scann().load_searcher(folder, assets_backcompat_shim=False))

    # ------------------------------------------------------------------ the hooks
    def _empty_state(self) -> State:
        return {"scann": None, "trained": None, "rows": np.empty(0, np.int64), "leaves": 0}

    def _train(self, x: np.ndarray) -> State:
        if len(x) < CENTRES_PER_BLOCK:
            raise VectorIndexError(
                f"training vectors: got {len(x)}, but ScaNN's asymmetric hashing needs at least {CENTRES_PER_BLOCK} "
                f"(its {CENTRES_PER_BLOCK} centres per block)"
            )
        if len(x) > self.training_sample_size:
            rng = np.random.default_rng(self.seed)
            x = x[np.sort(rng.choice(len(x), self.training_sample_size, replace=False))]
        leaves = min(self.num_leaves, len(x))  # ScaNN's k-means needs a training vector per leaf
        config = self._config(leaves, len(x))
        searcher = self._call("training", _scann().create_searcher, np.ascontiguousarray(x), config, 1)
        # Keep one training vector: ScaNN cannot load an empty searcher without re-ordering
        # (no codes, no vectors: "all null"), so the trained files hold one, deleted on the first add.
        self._call("training", searcher.searcher.delete, list(range(len(x) - 1, 0, -1)))  # last first: nothing moves
        return {"scann": None, "trained": self._files(searcher), "rows": np.empty(0, np.int64), "leaves": leaves}

    def _add(self, state, x, ids):
        n = len(state["ids"])
        if n + len(x) > MAX_VECTORS:
            raise VectorIndexError(f"x: {n} + {len(x)} vectors would pass ScaNN's limit of {MAX_VECTORS} (uint32 datapoint indices)")
        if state["scann"] is None:  # the first vectors: a copy of the trained searcher, without its training vector
            searcher = self._load(state["trained"])
            self._call("add", searcher.searcher.delete, [0])
        else:
            searcher = self._load(self._files(state["scann"]))  # copy, then write: the old one stays intact
        for start in range(0, len(x), UPSERT_BATCH):
            part = x[start : start + UPSERT_BATCH]
            self._call("add", searcher.searcher.upsert, [None] * len(part), part, len(part))
        rows = np.concatenate([state["rows"], np.arange(n, n + len(x), dtype=np.int64)])  # upserts append
        return {"scann": searcher, "rows": rows}

    def _remove(self, state, drop):
        if drop.all():
            return {"scann": None, "rows": np.empty(0, np.int64)}
        rows = state["rows"].copy()  # ScaNN datapoint -> our row
        where = np.empty(len(rows), np.int64)  # our row -> ScaNN datapoint
        where[rows] = np.arange(len(rows))
        # ScaNN deletes one datapoint at a time and moves its last one into the freed slot (its
        # Python wrapper's docid bookkeeping mirrors this). Deleting the highest datapoints first
        # keeps every later target where it was; the row map follows each move.
        targets = np.sort(where[drop])[::-1].tolist()
        size = len(rows)
        for target in targets:
            size -= 1
            rows[target] = rows[size]
        searcher = self._load(self._files(state["scann"]))
        self._call("remove", searcher.searcher.delete, targets)
        # Once more through the files: a deleting searcher keeps its leaves' lists in their old order,
        # a loaded one sorts them, and scores tied in the 8-bit lookup tables then rank differently.
        # Written and read back here, the index searches exactly as a saved and loaded copy of it will.
        searcher = self._load(self._files(searcher))
        renumber = np.cumsum(~drop) - 1  # survivors keep their order, renumbered 0..n-1
        return {"scann": searcher, "rows": renumber[rows[:size]]}

    def _search(self, state, q, k, settings, info):
        leaves = min(settings["leaves_to_search"], state["leaves"])
        pre = settings["pre_reorder_num_neighbors"]
        found, scores = self._call("search", state["scann"].searcher.search_batched, q, k, -1 if pre is None else pre, leaves, False, 0)
        found, scores = np.asarray(found), np.asarray(scores, np.float32)
        keys = np.full((len(q), k), np.inf, np.float32)
        rows = np.full((len(q), k), -1, np.int64)
        width = min(k, found.shape[1]) if found.ndim == 2 else 0
        ok = ~np.isnan(scores[:, :width])  # ScaNN pads short rows with datapoint 0 and a NaN score
        got = scores[:, :width] if self.metric == "l2" else -scores[:, :width]
        keys[:, :width] = np.where(ok, got, np.inf)
        rows[:, :width] = np.where(ok, state["rows"][found[:, :width].astype(np.int64)], -1)
        info.update({"leaves_searched": float(leaves)})
        return keys, self._rows_to_ids(state, rows)

    def _structure_bytes(self, state) -> int:
        """The trained files (tree, codebooks: the fixed part), and ScaNN's files of the stored vectors
        (codes, leaf tokens, the float32 vectors when re-ordering), plus the row map. ScaNN reports no
        size, so the searcher is written out to measure it (about 2 s for 60,000 x 784)."""
        trained = sum(len(blob) for blob in state["trained"].values()) if state["trained"] is not None else 0
        live = sum(len(blob) for blob in self._files(state["scann"]).values()) if state["scann"] is not None else 0
        return trained + live + state["rows"].nbytes

    # ------------------------------------------------------------------ file hooks
    def _arrays(self, state):
        out = {"rows": state["rows"], "leaves": np.array([state["leaves"]], np.int64)}
        for prefix, files in (("trained", state["trained"]), ("live", self._files(state["scann"]) if state["scann"] is not None else None)):
            for name, blob in (files or {}).items():
                out[f"{prefix}.{name}"] = np.frombuffer(blob, np.uint8)
        return out

    def _restore(self, arrays, n, where):
        rows = expect_array(arrays, "rows", np.int64, (n,), where)
        leaves = int(expect_array(arrays, "leaves", np.int64, (1,), where)[0])
        trained = {name.removeprefix("trained."): arr for name, arr in arrays.items() if name.startswith("trained.")}
        live = {name.removeprefix("live."): arr for name, arr in arrays.items() if name.startswith("live.")}
        if not self.is_trained:
            if n or trained or live or leaves:
                raise VectorIndexError(f"{where}: an untrained 'scann' index holds no ScaNN files, leaves or rows")
            return self._empty_state()
        if not 1 <= leaves <= self.num_leaves:
            raise VectorIndexError(f"{where}: saved leaves {leaves} must be in 1..num_leaves={self.num_leaves}")
        if not np.array_equal(np.sort(rows), np.arange(n)):
            raise VectorIndexError(f"{where}: saved array 'rows' is not a permutation of 0..{n - 1}")
        if not n and live:
            raise VectorIndexError(f"{where}: an empty 'scann' index holds no live ScaNN files")
        state = {"scann": None, "trained": self._checked_files(trained, 1, leaves, "trained", where), "rows": rows, "leaves": leaves}
        try:
            if n:
                state["scann"] = self._load(self._checked_files(live, n, leaves, "live", where))
            trained_searcher = self._load(state["trained"])
        except (RuntimeError, ValueError) as err:
            raise VectorIndexError(f"{where}: the saved ScaNN searcher cannot be read ({_last_line(err)})") from None
        for name, searcher, size in (("trained", trained_searcher, 1), ("live", state["scann"], n)):
            if searcher is not None and searcher.size() != size:
                raise VectorIndexError(f"{where}: the saved {name} ScaNN searcher holds {searcher.size()} vectors, expected {size}")
        return state

    def _checked_files(self, files: dict[str, np.ndarray], n: int, leaves: int, prefix: str, where: str) -> dict[str, bytes]:
        """Serialised ScaNN files from a saved index, checked before ScaNN reads them (it trusts its files: a
        wrong array shape can crash it): plain names, assets among them, the config these parameters build,
        and arrays of the shapes ``n`` vectors imply."""
        from scann.proto import scann_pb2
        from scann.scann_ops import scann_assets_pb2

        for name in ("scann_assets.pbtxt", "scann_config.pb"):
            expect_array(files, name, np.uint8, (None,), where + f": {prefix} ScaNN files")
        for name, arr in files.items():
            if not _FILE_NAME.match(name) or arr.dtype != np.uint8 or arr.ndim != 1:
                raise VectorIndexError(f"{where}: saved {prefix} ScaNN file {name!r} is not a plain file name with uint8 bytes")
        assets = self._parse(scann_assets_pb2.ScannAssets(), files["scann_assets.pbtxt"], where, text=True)
        for asset in assets.assets:
            if asset.asset_path not in files:  # no absolute paths, no '..': only the saved files
                raise VectorIndexError(f"{where}: {prefix} ScaNN asset path {asset.asset_path!r} is not one of the saved files")
        config = self._parse(scann_pb2.ScannConfig(), files["scann_config.pb"], where, text=False)
        sample = config.partitioning.expected_sample_size
        if not CENTRES_PER_BLOCK <= sample <= self.training_sample_size or config.partitioning.num_children != leaves:
            raise VectorIndexError(f"{where}: the saved {prefix} ScaNN config's tree ({config.partitioning.num_children} leaves, "
                                   f"sample {sample}) disagrees with the saved leaves {leaves} and training_sample_size")
        expected = self._parse(scann_pb2.ScannConfig(), self._config(leaves, sample).encode(), where, text=True)
        if not self._same(config, expected):
            raise VectorIndexError(f"{where}: the saved {prefix} ScaNN config is not the one the header's dim, metric and params build")
        blocks = -(-self.dim // self.dimensions_per_block)
        shapes = {"dataset.npy": (np.float32, (n, self.dim)), "hashed_dataset.npy": (np.uint8, (n, blocks)),
                  "datapoint_to_token.npy": (np.int32, (n,))}
        for name, (dtype, shape) in shapes.items():
            if name not in files:
                continue
            try:
                arr = np.load(io.BytesIO(files[name].tobytes()), allow_pickle=False)
            except (ValueError, OSError, EOFError) as err:
                raise VectorIndexError(f"{where}: saved {prefix} ScaNN file {name!r} cannot be read ({err})") from None
            if arr.dtype != dtype or arr.shape != shape:
                raise VectorIndexError(f"{where}: saved {prefix} ScaNN file {name!r} is {arr.dtype} {list(arr.shape)}, "
                                       f"expected {np.dtype(dtype)} {list(shape)}")
            if name == "datapoint_to_token.npy" and n and (arr.min() < 0 or arr.max() >= leaves):
                raise VectorIndexError(f"{where}: saved {prefix} ScaNN leaf tokens are outside 0..{leaves - 1}")
            if name == "dataset.npy" and n and not (np.abs(arr) <= MAX_ABS_VALUE).all():
                raise VectorIndexError(f"{where}: saved {prefix} ScaNN vectors hold NaN, inf or values beyond {MAX_ABS_VALUE:g}")
        need = {"datapoint_to_token.npy"} | ({"dataset.npy"} if self.reorder is not None else {"hashed_dataset.npy"})
        if n and not need <= set(files):
            raise VectorIndexError(f"{where}: saved {prefix} ScaNN files lack {sorted(need - set(files))}")
        return {name: arr.tobytes() for name, arr in files.items()}

    @staticmethod
    def _parse(message, blob, where: str, text: bool):
        from google.protobuf import message as pb_message
        from google.protobuf import text_format

        raw = blob.tobytes() if isinstance(blob, np.ndarray) else blob
        try:
            if text:
                text_format.Parse(raw.decode("utf-8"), message)
            else:
                message.ParseFromString(raw)
        except (pb_message.DecodeError, text_format.ParseError, UnicodeDecodeError) as err:
            raise VectorIndexError(f"{where}: a saved ScaNN {type(message).__name__} cannot be read ({err})") from None
        return message

    @staticmethod
    def _same(a, b) -> bool:
        """Protobuf equality by bytes, so that a NaN threshold (ScaNN's "off") equals itself."""
        return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
