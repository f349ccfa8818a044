"""The distributed embedding job on Ray Data: Parquet files of images in, Parquet shards of embeddings out.

    from visual_search.scale import write_image_shards, run_embedding_job, read_embeddings
    write_image_shards(images, ids, "in/")                     # (id int64, image bytes) Parquet files
    report = run_embedding_job("in/", "out/", num_workers=2)   # rows, seconds, images_per_s, files, ...
    ids, vectors, model_version = read_embeddings("out/")      # sorted by id

The job, step by step:

1. The driver checks the input (every file's footer: the columns, the image shape, the rows)
   and reads the checkpoint's bytes once (the committed SimCLR CNN by default).
2. ``ray.data.read_parquet`` reads the images in blocks (one or more per input file).
3. ``map_batches`` hands batches to an *actor pool* of ``num_workers`` ``_EmbedWorker`` actors.
   Each actor loads the encoder once, from the checkpoint bytes that travel through Ray's
   object store (so no worker needs the driver's files), runs torch on one thread, embeds
   each batch with the library's ``embed`` (the same numbers as a single-process ``embed``)
   and writes it as one Parquet shard (id, embedding; the model version in the file metadata).
4. The driver *commits*: it checks that the shards hold exactly the input's rows, moves them
   from the job's staging folder into ``output_dir`` and writes ``_manifest.json``.

Exactly once, even when a worker dies mid-run
---------------------------------------------
A worker process may die at any moment (a node lost, OOM, ``kill -9``). Ray Data (2.60)
creates actor-pool actors with ``max_restarts=-1`` and ``max_task_retries=-1``
(``ActorPoolMapOperator._apply_default_remote_args``): a dead actor is restarted, loads the
encoder again, and the task it was running is submitted again with the same input blocks,
so its batches are split the same way. So a row may be
*embedded* twice, but it is *stored* once, because of how shards are written:

* A shard's name is derived from its content: ``part-<first id>-<SHA-256 of its ids>.parquet``.
  A retried batch writes the same name, so it replaces its earlier copy instead of adding one.
* A shard is written to a temporary name and renamed into place (atomic on a POSIX
  filesystem; an object store's PUT is atomic too), so a worker killed mid-write leaves a
  temporary file, never a truncated shard.
* Shards go to ``output_dir/_staging/<job id>/``. Only the shards that *successful* tasks
  reported to the driver are committed; anything else there (a killed task's leftovers)
  is deleted. The commit refuses to happen unless the committed shards hold exactly as many
  rows as the input, and ``read_embeddings`` refuses duplicate ids: as every stored id comes
  from the input, equal counts and no duplicate mean none lost and none twice.
* The commit writes ``_manifest.json`` last (and an overwrite deletes the old one first), and
  ``read_embeddings`` refuses shards without one: a commit cut short is never read as the whole.
* Errors in the job's own code (a bad image) are not retried: they fail the job, and
  nothing is committed. ``max_errored_blocks`` stays 0, so no block is ever skipped.

On a cluster
------------
The same call runs on a real Ray cluster, with no code change:

1. Start the head node, ``ray start --head --port=6379``, and on each worker node
   ``ray start --address=HEAD:6379`` (or use KubeRay / the cluster launcher).
2. Put the input and output folders on storage every node sees: S3 or GCS URIs
   (``"s3://bucket/images/"``, read and written through ``pyarrow.fs``) or a shared
   NFS/EFS/Lustre mount at the same path on every node.
3. Call ``run_embedding_job("s3://bucket/images/", "s3://bucket/emb/", num_workers=64,
   address="auto")`` from a node of the cluster (``address="ray://HEAD:10001"`` from
   outside): it joins the cluster with ``ray_runtime.start(address=...)``, the same as
   ``ray.init(address=...)``. The weights need no shared storage: the driver puts the
   checkpoint's bytes in the object store and every actor fetches them from there.

Quiet in a notebook: the job turns off Ray Data's per-operator progress bars and its
"execution started" banner, and logs Ray Data at WARNING only; ``progress=True`` keeps one
overall progress bar. (Two lines still reach the driver from Ray's C++ core: a note that the
actors' constructor arguments live in the object store, and, after a worker death, the
raylet's "task will be retried".)

Throughput (``measure_throughput``, 20,000 Fashion-MNIST images, 8 files of 2,500 rows,
batches of 2,500, a shared 2-core machine at load 3-5): single-process ``embed`` on one
thread 1,263 images/s; the job 543 images/s with 1 worker and 867 with 2 (1.59x), of
which ~15-22 s are Ray Data's and the actors' start-up (new processes importing torch);
from the first batch to the last, 1,351 and 2,352 images/s (1.74x). A job pays that
start-up once, so it is for large inputs: at 20,000 images one process is faster.

Resources: each actor reserves one CPU, unless the pool would take more than half the
cluster's CPUs; then ``0.5 x CPUs / num_workers`` (logical CPUs only: each actor still runs
one torch thread). Ray Data 2.60 reserves half the cluster for its operators, and a pool
that takes it all leaves the read tasks no budget: the job then never starts. The read
tasks ask for no CPU (they only decode Parquet), and the V1 Parquet reader is used, which
makes one read task per file, so the files spread over the actors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from visual_search._checks import check_int
from visual_search.errors import ScaleError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow
    import pyarrow.fs

    from visual_search.models import Encoder

#: Schema metadata keys of the input files and of the embedding shards.
IMAGE_SHAPE_KEY = b"visual_search.image_shape"
MODEL_VERSION_KEY = b"visual_search.model_version"
#: The commit record the driver writes into ``output_dir`` once every shard is in place.
MANIFEST_NAME = "_manifest.json"
STAGING_DIR = "_staging"
SHARD_PREFIX = "part-"

#: Input rows per Parquet file (and so per read block) by default.
DEFAULT_ROWS_PER_FILE = 2_500
#: Images per actor call, which is also rows per output shard.
DEFAULT_BATCH_SIZE = 2_500
#: Images per forward pass inside ``embed``.
DEFAULT_FORWARD_BATCH = 500


# ---- paths: local folders or URIs (s3://, gs://), through pyarrow.fs --------------------------------
def _filesystem(path: str | Path, name: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """``(filesystem, path inside it)`` for a local folder or a URI such as ``s3://bucket/dir``."""
    import pyarrow.fs as pafs

    if not isinstance(path, (str, os.PathLike)):
        raise ScaleError(f"{name}: expected a folder path or URI, got {path!r}")
    text = os.fspath(path)
    if not isinstance(text, str) or not text:
        raise ScaleError(f"{name}: expected a folder path or URI, got {path!r}")
    if "://" in text:
        try:
            fs, inner = pafs.FileSystem.from_uri(text)
        except Exception as e:  # pyarrow raises ArrowInvalid / ArrowNotImplementedError / OSError
            raise ScaleError(f"{name}: cannot open {text!r} ({type(e).__name__}: {e})") from e
        return fs, inner.rstrip("/")
    return pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())


def _list_files(fs: pyarrow.fs.FileSystem, folder: str, prefix: str = "", suffix: str = ".parquet") -> list[str]:
    """The files directly in ``folder`` named ``prefix*suffix``, sorted (hidden and ``_`` files skipped)."""
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=False))
    names = [i.path for i in infos if i.type == pafs.FileType.File]
    keep = []
    for path in names:
        base = path.rsplit("/", 1)[-1]
        if base.startswith((".", "_")) or not base.startswith(prefix) or not base.endswith(suffix):
            continue
        keep.append(path)
    return sorted(keep)


def _is_dir(fs: pyarrow.fs.FileSystem, path: str) -> bool:
    import pyarrow.fs as pafs

    return fs.get_file_info(path).type == pafs.FileType.Directory


def _write_atomic(fs: pyarrow.fs.FileSystem, table: pyarrow.Table, path: str) -> None:
    """Write ``table`` to ``path`` via a temporary name and a rename: readers never see half a file."""
    import pyarrow.parquet as pq

    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        pq.write_table(table, tmp, filesystem=fs)
        fs.move(tmp, path)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except Exception:  # noqa: BLE001 - best effort; a leftover temp file is ignored by every reader
            pass
        raise


def _write_text_atomic(fs: pyarrow.fs.FileSystem, text: str, path: str) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with fs.open_output_stream(tmp) as f:
        f.write(text.encode())
    fs.move(tmp, path)


# ---- the input: Parquet files of (id, image bytes) ---------------------------------------------------
def _check_images_ids(images: Any, ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate the images and ids ``write_image_shards`` is given; return them as arrays."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 3:
        got = f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ScaleError(f"images: expected a uint8 array [N, H, W], got {got}")
    if len(images) == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise ScaleError(f"images: empty ({list(images.shape)}), nothing to embed")
    ids_arr = np.asarray(ids)
    if ids_arr.ndim != 1 or not (np.issubdtype(ids_arr.dtype, np.integer) and ids_arr.dtype != np.bool_):
        raise ScaleError(f"ids: expected 1-d integers, got {ids_arr.dtype} {list(ids_arr.shape)}")
    if len(ids_arr) != len(images):
        raise ScaleError(f"ids: {len(ids_arr)} ids for {len(images)} images")
    if ids_arr.dtype == np.uint64 and ids_arr.size and ids_arr.max() > np.iinfo(np.int64).max:
        raise ScaleError(f"ids: {int(ids_arr.max())} does not fit int64")
    ids_arr = ids_arr.astype(np.int64)
    if (ids_arr < 0).any():
        raise ScaleError(f"ids: must be >= 0, got {int(ids_arr[ids_arr < 0][0])}")
    unique, counts = np.unique(ids_arr, return_counts=True)
    if (counts > 1).any():
        raise ScaleError(f"ids: must be distinct, {int(unique[counts > 1][0])} appears {int(counts[counts > 1][0])} times")
    return images, ids_arr


def write_image_shards(images: np.ndarray, ids: Sequence[int] | np.ndarray, out_dir: str | Path, rows_per_file: int = DEFAULT_ROWS_PER_FILE) -> list[str]:
    """Write images as the embedding job's input: Parquet files of ``(id int64, image bytes)``.

    Each image is stored as its raw ``H*W`` bytes (row-major); the shape is recorded in
    every file's schema metadata, so the job can rebuild ``[N, H, W]`` without decoding.
    One file is one (or more) of the job's read blocks, so ``rows_per_file`` sets how
    finely the work is spread over the workers.

    Args:
        images: uint8 ``[N, H, W]`` (as ``load_fashion_mnist`` returns them).
        ids: ``N`` distinct non-negative integers, the ids the embeddings will carry.
        out_dir: the folder to write (created; a local path or a URI such as ``s3://bucket/in``).
            Existing ``images-*.parquet`` files in it are refused, so two inputs never mix.
        rows_per_file: rows per file (the last may have fewer).

    Returns:
        The paths written, in id order of the input (``images-00000.parquet``, ...).

    Raises:
        ScaleError: naming the input, for images that are not uint8 [N, H, W], ids of the wrong
            length or type, negative or repeated ids, a bad ``rows_per_file``, or an ``out_dir``
            that already holds input files.
    """
    import pyarrow as pa

    images, ids_arr = _check_images_ids(images, ids)
    rows_per_file = check_int(rows_per_file, "rows_per_file", low=1, error=ScaleError)
    fs, folder = _filesystem(out_dir, "out_dir")
    fs.create_dir(folder, recursive=True)
    if _list_files(fs, folder, prefix="images-"):
        raise ScaleError(f"out_dir: {out_dir} already holds images-*.parquet files; write to an empty folder")
    n, h, w = images.shape
    schema = pa.schema([("id", pa.int64()), ("image", pa.binary())], metadata={IMAGE_SHAPE_KEY: json.dumps([h, w]).encode()})
    flat = np.ascontiguousarray(images).reshape(n, h * w)
    paths = []
    for i, start in enumerate(range(0, n, rows_per_file)):
        part = flat[start : start + rows_per_file]
        # one binary array over the contiguous pixel buffer: offsets every h*w bytes, no per-image Python objects
        offsets = pa.array(np.arange(len(part) + 1, dtype=np.int32) * (h * w), pa.int32())
        column = pa.BinaryArray.from_buffers(pa.binary(), len(part), [None, offsets.buffers()[1], pa.py_buffer(part.tobytes())])
        table = pa.Table.from_arrays([pa.array(ids_arr[start : start + rows_per_file]), column], schema=schema)
        path = f"{folder}/images-{i:05d}.parquet"
        _write_atomic(fs, table, path)
        paths.append(path)
    return paths


def _inspect_input(input_dir: str | Path) -> tuple[pyarrow.fs.FileSystem, list[str], tuple[int, int], int]:
    """Check the job's input from the files' footers only: ``(fs, files, (H, W), rows)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, folder = _filesystem(input_dir, "input_dir")
    if not _is_dir(fs, folder):
        raise ScaleError(f"input_dir: {input_dir} is not a folder (write one with write_image_shards)")
    files = _list_files(fs, folder)
    if not files:
        raise ScaleError(f"input_dir: {input_dir} holds no .parquet files (write them with write_image_shards)")
    shape, rows = None, 0
    for path in files:
        try:
            meta = pq.read_metadata(path, filesystem=fs)
        except Exception as e:  # ArrowInvalid for a file that is not Parquet
            raise ScaleError(f"input_dir: {path} is not a readable Parquet file ({type(e).__name__}: {e})") from e
        schema = meta.schema.to_arrow_schema()
        if schema.names[:2] != ["id", "image"] or schema.field("id").type != pa.int64() or schema.field("image").type not in (pa.binary(), pa.large_binary()):
            raise ScaleError(f"input_dir: {path} has columns {[f'{f.name} {f.type}' for f in schema]}, expected (id int64, image binary) as write_image_shards writes")
        raw = (schema.metadata or {}).get(IMAGE_SHAPE_KEY)
        try:
            file_shape = tuple(int(v) for v in json.loads(raw))
        except (TypeError, ValueError):
            file_shape = ()
        if len(file_shape) != 2 or min(file_shape) < 1:
            raise ScaleError(f"input_dir: {path} has no valid image shape in its metadata ({raw!r}); write it with write_image_shards")
        if shape is not None and file_shape != shape:
            raise ScaleError(f"input_dir: {path} holds {list(file_shape)} images, the files before it {list(shape)}")
        shape = file_shape
        rows += meta.num_rows
    if rows == 0:
        raise ScaleError(f"input_dir: {input_dir} holds Parquet files but no rows")
    return fs, files, shape, rows


# ---- the encoder's weights, as bytes that travel through the object store ----------------------------
def _checkpoint_bytes(checkpoint: str | Path | Encoder | None) -> tuple[bytes, str]:
    """The checkpoint file's bytes and its model version (the committed CNN for None; an Encoder is saved first)."""
    from visual_search import models

    if checkpoint is None or isinstance(checkpoint, (str, Path)):
        path = Path(checkpoint) if checkpoint is not None else models.CHECKPOINT_PATH
        try:
            encoder = models.load_pretrained(path)  # verifies it (checksum, architecture) before any worker sees it
        except models.ModelError as e:
            raise ScaleError(f"checkpoint: {e}") from e
        return path.read_bytes(), encoder.version
    if isinstance(checkpoint, models.Encoder):
        with tempfile.TemporaryDirectory() as tmp:
            path = models.save_encoder(checkpoint, Path(tmp) / "encoder.pt")
            return Path(path).read_bytes(), checkpoint.version
    raise ScaleError(f"checkpoint: expected None, a checkpoint path or an Encoder, got {type(checkpoint).__name__}")


def _shard_name(ids: np.ndarray) -> str:
    """A shard's name from its content: the same batch always gets the same name (see the module docstring)."""
    digest = hashlib.sha256(np.ascontiguousarray(ids, dtype="<i8").tobytes()).hexdigest()[:16]
    return f"{SHARD_PREFIX}{int(ids[0]):019d}-{digest}.parquet"


class _EmbedWorker:
    """One actor of the pool: loads the encoder once, then embeds and writes batches.

    Args:
        weights: ``[ObjectRef]`` of the checkpoint's bytes (in a list, so Ray hands the ref over as it is).
        model_version: what the weights must give (checked once the encoder is built).
        image_shape: ``(H, W)`` of the input images.
        staging: the URI or local path of the job's staging folder (on storage every node sees).
        forward_batch: images per forward pass.
        die_on_id, die_marker, die_after_write: fault injection for tests: the first batch holding
            ``die_on_id`` kills this worker process with ``os._exit`` (before or after writing its shard),
            once per job: ``die_marker`` is created first, and a worker that finds it carries on.
    """

    def __init__(self, weights: list, model_version: str, image_shape: tuple[int, int], staging: str, forward_batch: int,
                 die_on_id: int | None = None, die_marker: str | None = None, die_after_write: bool = False):
        import ray
        import torch

        from visual_search.models import load_pretrained

        started = time.perf_counter()
        torch.set_num_threads(1)  # one core per actor: the pool, not torch, spreads the work
        blob = ray.get(weights[0])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "checkpoint.pt"
            path.write_bytes(blob)
            self.encoder = load_pretrained(path)  # verifies the checksum before unpickling anything
        if self.encoder.version != model_version:
            raise ScaleError(f"worker: the weights give model version {self.encoder.version}, the driver expected {model_version}")
        self.model_version = model_version
        self.shape = tuple(image_shape)
        self.fs, self.staging = _filesystem(staging, "staging")
        self.forward_batch = forward_batch
        self.die_on_id, self.die_marker, self.die_after_write = die_on_id, die_marker, die_after_write
        self.init_seconds = time.perf_counter() - started  # reported with the first batch only

    def _maybe_die(self, ids: np.ndarray) -> None:
        if self.die_on_id is None or self.die_on_id not in ids:
            return
        try:
            fd = os.open(self.die_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # already died once in this job
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(1)  # a real process death: no exception, no cleanup, as with SIGKILL or OOM

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pyarrow as pa

        from visual_search.embed import embed

        started, wall_start = time.perf_counter(), time.time()
        ids = np.asarray(batch["id"], dtype=np.int64)
        h, w = self.shape
        blobs = batch["image"]
        sizes = {len(b) for b in blobs}
        if sizes != {h * w}:
            raise ScaleError(f"image bytes: expected {h * w} bytes per image ([{h}, {w}]), got sizes {sorted(sizes)[:5]} (ids from {ids[0]})")
        images = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(ids), h, w)
        if not self.die_after_write:
            self._maybe_die(ids)
        vectors = embed(self.encoder, images, batch_size=self.forward_batch, progress=False)
        dim = vectors.shape[1]
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
        schema = pa.schema([("id", pa.int64()), ("embedding", pa.list_(pa.float32(), dim))],
                           metadata={MODEL_VERSION_KEY: self.model_version.encode()})
        table = pa.Table.from_arrays([pa.array(ids), column], schema=schema)
        name = _shard_name(ids)
        _write_atomic(self.fs, table, f"{self.staging}/{name}")
        if self.die_after_write:
            self._maybe_die(ids)
        init, self.init_seconds = self.init_seconds, 0.0
        return {"file": np.array([name]), "rows": np.array([len(ids)], dtype=np.int64), "dim": np.array([dim], dtype=np.int64),
                "seconds": np.array([time.perf_counter() - started]), "init_seconds": np.array([init]), "pid": np.array([os.getpid()]),
                "started_at": np.array([wall_start]), "finished_at": np.array([time.time()])}


def _guard_fsspec_http() -> None:
    """Work around a Ray Data race when fsspec is installed without aiohttp.

    ``read_parquet`` lists files on several threads, and each checks for fsspec's
    ``HTTPFileSystem`` with ``from fsspec.implementations.http import HTTPFileSystem``,
    catching only ``ModuleNotFoundError``. Without aiohttp that import fails, and threads
    racing on the half-imported module get a plain ``ImportError`` that escapes. Marking the
    module as absent (which it is, without aiohttp) makes every thread see ``ModuleNotFoundError``.
    """
    import sys

    try:
        import fsspec.implementations.http  # noqa: F401
    except ModuleNotFoundError:
        sys.modules.setdefault("fsspec.implementations.http", None)
    except ImportError:
        pass


@contextmanager
def _quiet_ray_data(progress: bool) -> Iterator[Any]:
    """Ray Data's context for this job: no per-operator bars, no banner, WARNING logs; restored afterwards."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = {k: getattr(ctx, k) for k in ("enable_progress_bars", "enable_operator_progress_bars", "print_on_execution_start", "max_errored_blocks",
                                          "use_datasource_v2")}
    # WARNING for Ray Data; ERROR for its progress module, whose only message says that bars are off
    loggers = {logging.getLogger("ray.data"): logging.WARNING, logging.getLogger("ray.data._internal.progress"): logging.ERROR}
    levels = [lg.level for lg in loggers]
    try:
        ctx.enable_progress_bars = progress
        ctx.enable_operator_progress_bars = False
        ctx.print_on_execution_start = False
        ctx.max_errored_blocks = 0  # never skip a block: a row is embedded or the job fails
        # The V1 Parquet reader makes one read task per file (override_num_blocks): the V2 reader merges small
        # files into one task, whose single output block then goes to one actor while the others idle.
        ctx.use_datasource_v2 = False
        for lg, level in loggers.items():
            lg.setLevel(level)
        yield ctx
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def run_embedding_job(
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    num_workers: int = 2,
    batch_size: int = DEFAULT_BATCH_SIZE,
    checkpoint: str | Path | Encoder | None = None,
    address: str | None = None,
    forward_batch: int = DEFAULT_FORWARD_BATCH,
    overwrite: bool = False,
    progress: bool = False,
    _die_on_id: int | None = None,
    _die_marker: str | Path | None = None,
    _die_after_write: bool = False,
) -> dict[str, Any]:
    """Embed every image of ``input_dir`` on Ray, into Parquet shards in ``output_dir``, each row exactly once.

    See the module docstring for the steps, the exactly-once mechanism and running on a cluster.

    Args:
        input_dir: a folder (or URI) of Parquet files written by ``write_image_shards``.
        output_dir: where the shards go (created; a local path or URI). It must not hold
            shards already, unless ``overwrite`` (then the old shards are replaced at the commit).
        num_workers: actors in the pool, each with one torch thread and one CPU reserved
            (0.5 x CPUs / workers when the pool would take the whole cluster, see below).
        batch_size: images per actor call, and so rows per output shard; larger batches
            amortise the per-call and per-file costs, smaller ones spread the work more evenly.
        checkpoint: the encoder: None for the committed SimCLR CNN (``load_pretrained``), a
            checkpoint path on the driver, or an ``Encoder`` (saved to bytes first).
        address: None to start (or reuse) a local Ray; ``"auto"``, ``"HOST:PORT"`` or
            ``"ray://HOST:10001"`` to join a cluster (``ray_runtime.start``). Ray is left running
            for the next job; ``ray_runtime.stop()`` ends it.
        forward_batch: images per forward pass inside ``embed``.
        overwrite: replace the shards of an earlier run in ``output_dir``.
        progress: show Ray Data's overall progress bar (off by default: quiet in a notebook).
        _die_on_id, _die_marker, _die_after_write: fault injection for tests (see ``_EmbedWorker``).

    Returns:
        A report: ``rows``, ``seconds`` (wall time, Ray start excluded), ``images_per_s``,
        ``num_workers``, ``batch_size``, ``files`` (the shards written), ``input_files``,
        ``model_version``, ``embedding_dim``, ``output_dir``, ``discarded_files`` (staged
        leftovers of retried tasks that were not committed), ``worker_seconds`` (the actors'
        time in their batches, summed), ``worker_init_seconds`` (their start-up: torch and
        the model, summed), ``worker_pids`` (the processes that wrote the committed shards),
        ``processing_seconds`` (first batch started to last batch done: the job without its
        start-up) and ``address``.

    Raises:
        ScaleError: naming the input, for a missing or empty ``input_dir``, files that are not
            the job's input, a bad ``num_workers``, ``batch_size``, ``forward_batch``,
            a bad checkpoint, an ``output_dir`` that already holds shards,
            more workers than the cluster has CPUs, or a job whose shards do not hold exactly
            the input's rows (nothing is committed then).
    """
    from visual_search.scale import ray_runtime

    num_workers = check_int(num_workers, "num_workers", low=1, error=ScaleError)
    batch_size = check_int(batch_size, "batch_size", low=1, error=ScaleError)
    forward_batch = check_int(forward_batch, "forward_batch", low=1, error=ScaleError)
    if (_die_on_id is None) != (_die_marker is None):
        raise ScaleError("_die_on_id and _die_marker go together")
    in_fs, in_files, shape, rows = _inspect_input(input_dir)
    out_fs, out_folder = _filesystem(output_dir, "output_dir")
    if _is_dir(out_fs, out_folder) and _list_files(out_fs, out_folder, prefix=SHARD_PREFIX) and not overwrite:
        raise ScaleError(f"output_dir: {output_dir} already holds embedding shards; pass overwrite=True or use an empty folder")
    blob, model_version = _checkpoint_bytes(checkpoint)

    ray = ray_runtime.start(address=address)
    cpus = ray.cluster_resources().get("CPU", 0)
    if num_workers > cpus:
        raise ScaleError(f"num_workers: {num_workers} workers need {num_workers} CPUs, the Ray cluster has {cpus:g}")
    # One CPU per actor, unless the pool would take more than half the cluster's CPUs: Ray Data 2.60's resource
    # reservation (half the cluster, shared by the operators) then finds no budget for the read tasks and the job
    # waits forever (measured: 2 actors of 1.0 or 0.9 CPU on 2 CPUs hang; 0.5 runs). Logical CPUs only: each actor
    # still runs one torch thread, so 2 workers on a 2-core laptop use both cores.
    worker_cpus = min(1.0, 0.5 * cpus / num_workers)
    job_id = uuid.uuid4().hex[:12]
    staging = f"{out_folder}/{STAGING_DIR}/{job_id}"
    out_fs.create_dir(staging, recursive=True)
    # the workers open the staging folder themselves, so they get it as a local path or as the URI it came from
    staging_uri = staging if "://" not in os.fspath(output_dir) else f"{os.fspath(output_dir).rstrip('/')}/{STAGING_DIR}/{job_id}"
    weights_ref = ray.put(blob)
    start = time.perf_counter()
    try:
        _guard_fsspec_http()
        with _quiet_ray_data(progress):
            ds = ray.data.read_parquet(in_files, filesystem=in_fs, columns=["id", "image"], num_cpus=0,
                                      override_num_blocks=len(in_files))  # I/O: leave the CPUs to the actors
            ds = ds.map_batches(
                _EmbedWorker,
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=num_workers),
                num_cpus=worker_cpus,
                fn_constructor_kwargs={
                    "weights": [weights_ref], "model_version": model_version, "image_shape": shape, "staging": staging_uri,
                    "forward_batch": forward_batch, "die_on_id": _die_on_id,
                    "die_marker": None if _die_marker is None else os.fspath(_die_marker), "die_after_write": _die_after_write,
                },
            )
            written = ds.take_all()
        seconds = time.perf_counter() - start
        report = _commit(out_fs, out_folder, staging, written, rows, model_version, overwrite)
    except Exception:
        _delete_dir(out_fs, staging)
        raise
    finally:
        del weights_ref
    report.update(seconds=seconds, images_per_s=rows / seconds if seconds > 0 else float("inf"), num_workers=num_workers,
                  batch_size=batch_size, input_files=len(in_files), output_dir=os.fspath(output_dir), address=address)
    return report


def _delete_dir(fs: pyarrow.fs.FileSystem, path: str) -> None:
    try:
        fs.delete_dir(path)
    except Exception:  # noqa: BLE001 - best effort: a staging leftover is ignored by read_embeddings
        pass


def _delete_if_empty(fs: pyarrow.fs.FileSystem, path: str) -> None:
    import pyarrow.fs as pafs

    try:
        if not fs.get_file_info(pafs.FileSelector(path)):
            fs.delete_dir(path)
    except Exception:  # noqa: BLE001 - best effort, as _delete_dir
        pass


def _commit(fs: pyarrow.fs.FileSystem, folder: str, staging: str, written: list[dict[str, Any]], rows: int,
            model_version: str, overwrite: bool) -> dict[str, Any]:
    """Move the reported shards from staging into ``folder`` if they hold exactly ``rows`` rows; write the manifest."""
    shards: dict[str, int] = {}
    for item in written:
        name, n = str(item["file"]), int(item["rows"])
        if shards.get(name, n) != n:
            raise ScaleError(f"job: shard {name} was reported with {shards[name]} and {n} rows")
        shards[name] = n  # a name reported twice is the same batch, stored once
    total = sum(shards.values())
    if total != rows:
        raise ScaleError(f"job: the shards hold {total:,} rows, the input {rows:,}; nothing was committed")
    dims = {int(item["dim"]) for item in written}
    staged = set(_list_files(fs, staging, prefix=SHARD_PREFIX))
    missing = sorted(f"{staging}/{name}" for name in shards if f"{staging}/{name}" not in staged)
    if missing:
        raise ScaleError(f"job: reported shards are missing from staging: {missing[:3]}")
    if overwrite:
        for old in _list_files(fs, folder, prefix=SHARD_PREFIX):
            fs.delete_file(old)
        try:
            fs.delete_file(f"{folder}/{MANIFEST_NAME}")
        except (FileNotFoundError, OSError):
            pass
    for name in sorted(shards):
        fs.move(f"{staging}/{name}", f"{folder}/{name}")
    discarded = len(staged) - len(shards)
    _delete_dir(fs, staging)
    _delete_if_empty(fs, f"{folder}/{STAGING_DIR}")
    manifest = {"model_version": model_version, "rows": rows, "embedding_dim": dims.pop() if len(dims) == 1 else None,
                "files": {name: shards[name] for name in sorted(shards)}}
    _write_text_atomic(fs, json.dumps(manifest, indent=1), f"{folder}/{MANIFEST_NAME}")
    return {"rows": rows, "files": sorted(shards), "model_version": model_version, "embedding_dim": manifest["embedding_dim"],
            "discarded_files": discarded, "worker_seconds": float(sum(item["seconds"] for item in written)),
            "worker_init_seconds": float(sum(item["init_seconds"] for item in written)),
            "worker_pids": sorted({int(item["pid"]) for item in written}),
            # from the first batch's start to the last one's end (wall clocks of the workers' machines): the job
            # without Ray's and the actors' start-up, i.e. the rate a long job settles at
            "processing_seconds": float(max(item["finished_at"] for item in written) - min(item["started_at"] for item in written))}


# ---- reading the output ------------------------------------------------------------------------------
def read_embeddings(output_dir: str | Path) -> tuple[np.ndarray, np.ndarray, str]:
    """Read a job's shards back: ``(ids int64 [N], embeddings float32 [N, D], model_version)``, sorted by id.

    Args:
        output_dir: the ``output_dir`` of ``run_embedding_job`` (local path or URI).

    Returns:
        The ids, their embeddings (row i belongs to ids[i]) and the one model version they share.

    Raises:
        ScaleError, naming the file: a missing folder or one without shards, a shard without a
            model version or of another model version than the first, another embedding size,
            an id that appears twice (within or across shards), or fewer/other shards than
            ``_manifest.json`` records.
    """
    import pyarrow.parquet as pq

    fs, folder = _filesystem(output_dir, "output_dir")
    if not _is_dir(fs, folder):
        raise ScaleError(f"output_dir: {output_dir} is not a folder")
    files = _list_files(fs, folder, prefix=SHARD_PREFIX)
    if not files:
        raise ScaleError(f"output_dir: {output_dir} holds no {SHARD_PREFIX}*.parquet shards")
    version, dim = None, None
    id_parts, vec_parts, owners = [], [], []
    for path in files:
        try:
            table = pq.read_table(path, filesystem=fs)
        except Exception as e:  # ArrowInvalid for a damaged file
            raise ScaleError(f"output_dir: {path} is not a readable Parquet file ({type(e).__name__}: {e})") from e
        meta = table.schema.metadata or {}
        file_version = meta.get(MODEL_VERSION_KEY, b"").decode() or None
        if file_version is None:
            raise ScaleError(f"output_dir: {path} records no model version")
        if version is not None and file_version != version:
            raise ScaleError(f"output_dir: {path} was embedded by {file_version}, {files[0]} by {version}; mixed model versions")
        version = file_version
        if table.schema.names != ["id", "embedding"]:
            raise ScaleError(f"output_dir: {path} has columns {table.schema.names}, expected ['id', 'embedding']")
        column = table.column("embedding").combine_chunks()
        file_dim = column.type.list_size
        if dim is not None and file_dim != dim:
            raise ScaleError(f"output_dir: {path} has {file_dim}-d embeddings, {files[0]} {dim}-d")
        dim = file_dim
        id_parts.append(table.column("id").to_numpy())
        vec_parts.append(column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim))
        owners.append(np.full(len(table), len(owners)))
    ids = np.concatenate(id_parts).astype(np.int64, copy=False)
    vectors = np.concatenate(vec_parts)
    order = np.argsort(ids, kind="stable")
    ids, vectors, owner = ids[order], vectors[order], np.concatenate(owners)[order]
    dup = np.flatnonzero(ids[1:] == ids[:-1])
    if dup.size:
        i = dup[0]
        raise ScaleError(f"output_dir: id {int(ids[i])} appears twice, in {files[owner[i]]} and {files[owner[i + 1]]}")
    _check_manifest(fs, folder, files, len(ids), version)
    return ids, vectors, version


def _check_manifest(fs: pyarrow.fs.FileSystem, folder: str, files: list[str], rows: int, version: str) -> None:
    """The job's ``_manifest.json`` must be there (it is written last), and the shards exactly the ones it records."""
    path = f"{folder}/{MANIFEST_NAME}"
    try:
        with fs.open_input_stream(path) as f:
            manifest = json.loads(f.read().decode())
    except (FileNotFoundError, OSError):
        # The commit writes the manifest last: without it the shards are a commit that never finished
        # (or an overwrite cut short), a subset of the rows that must not be read as the whole.
        raise ScaleError(f"output_dir: {folder} has shards but no {MANIFEST_NAME}: the job's commit did not finish; run the job again") from None
    except ValueError as e:
        raise ScaleError(f"output_dir: {path} is not valid JSON ({e})") from e
    names = sorted(p.rsplit("/", 1)[-1] for p in files)
    if sorted(manifest.get("files", {})) != names:
        extra = sorted(set(names) - set(manifest.get("files", {})))
        gone = sorted(set(manifest.get("files", {})) - set(names))
        raise ScaleError(f"output_dir: the shards differ from {path}: not recorded {extra[:3]}, missing {gone[:3]}")
    if manifest.get("rows") != rows or manifest.get("model_version") != version:
        raise ScaleError(f"output_dir: {path} records {manifest.get('rows')} rows of {manifest.get('model_version')}, the shards hold {rows} of {version}")


# ---- the benchmark ------------------------------------------------------------------------------------
def measure_throughput(
    images: np.ndarray,
    worker_counts: Sequence[int] = (1, 2),
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    forward_batch: int = DEFAULT_FORWARD_BATCH,
    checkpoint: str | Path | Encoder | None = None,
    address: str | None = None,
    work_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Images per second of the job with each worker count, and of single-process ``embed`` on one thread.

    The input is written once and every run embeds the same files; the single-process
    reference is measured in the same call (same machine, same load), so the speedups are
    comparable. A run's seconds include starting its actors (each loads torch and the model),
    which is what a user of the job waits for.

    Args:
        images: uint8 ``[N, H, W]``; ids are ``0..N-1``.
        worker_counts: the pool sizes to run, in order.
        batch_size, rows_per_file, forward_batch: as in ``run_embedding_job`` / ``write_image_shards``.
        checkpoint, address: as in ``run_embedding_job``.
        work_dir: where the input and outputs go (default: a temporary folder, deleted afterwards).

    Returns:
        One dict per run: ``{"mode": "single-process"|"ray", "num_workers", "rows", "seconds",
        "images_per_s", "vs_single_process"}``; the ray runs add ``processing_seconds`` and
        ``processing_images_per_s`` (first batch to last: without start-up), ``startup_seconds``,
        and, when the first run has 1 worker, ``speedup_vs_1_worker`` and
        ``processing_speedup_vs_1_worker``.

    Raises:
        ScaleError: for bad images or worker counts (see ``run_embedding_job``).
    """
    from visual_search import models
    from visual_search.embed import embed
    from visual_search.timing import throughput

    counts = [check_int(c, "worker_counts[]", low=1, error=ScaleError) for c in worker_counts]
    if not counts:
        raise ScaleError("worker_counts: empty, nothing to measure")
    images, _ = _check_images_ids(images, np.arange(len(images)) if isinstance(images, np.ndarray) else [])
    encoder = checkpoint if isinstance(checkpoint, models.Encoder) else models.load_pretrained(checkpoint or models.CHECKPOINT_PATH)
    single = throughput(lambda x: embed(encoder, x, batch_size=forward_batch, progress=False), images, threads=1, repeats=1)
    results = [{"mode": "single-process", "num_workers": 1, "rows": len(images), "seconds": len(images) / single, "images_per_s": single}]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(work_dir) if work_dir is not None else Path(tmp)
        in_dir = base / f"input-{uuid.uuid4().hex[:8]}"
        write_image_shards(images, np.arange(len(images)), in_dir, rows_per_file=rows_per_file)
        for count in counts:
            out_dir = base / f"out-{count}-{uuid.uuid4().hex[:8]}"
            report = run_embedding_job(in_dir, out_dir, num_workers=count, batch_size=batch_size, forward_batch=forward_batch,
                                       checkpoint=checkpoint, address=address)
            results.append({"mode": "ray", "num_workers": count, "rows": report["rows"], "seconds": report["seconds"],
                            "images_per_s": report["images_per_s"], "processing_seconds": report["processing_seconds"],
                            "processing_images_per_s": report["rows"] / report["processing_seconds"],
                            "startup_seconds": report["seconds"] - report["processing_seconds"]})
    first = next(r for r in results if r["mode"] == "ray")
    for r in results:
        r["vs_single_process"] = r["images_per_s"] / single
        if r["mode"] == "ray" and first["num_workers"] == 1:
            r["speedup_vs_1_worker"] = r["images_per_s"] / first["images_per_s"]
            r["processing_speedup_vs_1_worker"] = r["processing_images_per_s"] / first["processing_images_per_s"]
    return results


def killed_worker_run(
    images: np.ndarray,
    work_dir: str | Path,
    *,
    num_workers: int = 2,
    batch_size: int | None = None,
    after_write: bool = True,
    address: str | None = None,
) -> dict[str, Any]:
    """Run the job with one worker process killed mid-run, and count what was lost or stored twice.

    The first batch that holds the middle image's id makes its actor end its own process with
    ``os._exit`` (no exception, no cleanup: what SIGKILL or the OOM killer does), once; with
    ``after_write`` it dies just after writing that batch's shard, before the driver hears of it,
    the harder case. Ray restarts the actor and retries the task. The output is then compared
    row by row with single-process ``embed``.

    Args:
        images: uint8 ``[N, H, W]``; ids are ``0..N-1``.
        work_dir: a fresh folder for the input, the output and the death marker.
        num_workers, address: as in ``run_embedding_job``.
        batch_size: images per actor call (default: a quarter of the images, so the death is mid-run).
        after_write: die after writing the shard (True) or before (False).

    Returns:
        ``rows`` (stored), ``expected``, ``lost`` (input ids missing from the output),
        ``duplicated`` (stored rows beyond one per id), ``worker_died`` (the marker was written
        by a process that no longer exists), ``dead_pid``, ``max_abs_diff`` against ``embed``,
        ``seconds`` and ``discarded_files`` (stray shards the commit deleted).
    """
    import pyarrow.parquet as pq

    from visual_search.embed import embed
    from visual_search.models import load_pretrained

    images, ids = _check_images_ids(images, np.arange(len(images)) if isinstance(images, np.ndarray) else [])
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    batch = batch_size or max(1, len(images) // 4)
    write_image_shards(images, ids, work / "input", rows_per_file=batch)
    marker = work / "died"
    report = run_embedding_job(work / "input", work / "output", num_workers=num_workers, batch_size=batch, address=address,
                               _die_on_id=int(ids[len(ids) // 2]), _die_marker=marker, _die_after_write=after_write)
    stored = np.concatenate([pq.read_table(str(path), columns=["id"]).column("id").to_numpy() for path in sorted((work / "output").glob("*.parquet"))])
    got_ids, got, _ = read_embeddings(work / "output") if len(np.unique(stored)) == len(stored) else (np.unique(stored), None, None)
    pid = int(marker.read_text()) if marker.exists() else None
    alive = pid is not None
    if pid is not None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            alive = False
    reference = embed(load_pretrained(), images, progress=False)
    return {
        "rows": int(len(stored)), "expected": int(len(ids)), "lost": int(len(np.setdiff1d(ids, stored))),
        "duplicated": int(len(stored) - len(np.unique(stored))), "worker_died": pid is not None and not alive, "dead_pid": pid,
        "max_abs_diff": float(np.abs(got - reference[got_ids]).max()) if got is not None else float("nan"),
        "seconds": report["seconds"], "discarded_files": report["discarded_files"], "after_write": after_write,
    }


__all__ = ["killed_worker_run", "measure_throughput", "read_embeddings", "run_embedding_job", "write_image_shards"]
