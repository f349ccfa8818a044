"""The distributed embedding job on Ray Data: same numbers as ``embed``, every row exactly once, bad input refused.

The jobs run on the session's real local Ray (the ``ray_local`` fixture, 2 CPUs); the
worker-death tests kill a real actor process (``os._exit`` inside the worker, as an OOM
kill or a lost node would) and check that the job still stores every row exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from visual_search.embed import embed
from visual_search.errors import ScaleError
from visual_search.models import load_pretrained
from visual_search.scale import ray_embed
from visual_search.scale.ray_embed import read_embeddings, run_embedding_job, write_image_shards

N_IMAGES = 600
ROWS_PER_FILE = 150  # 4 input files, so 2 workers both get work
BATCH = 100  # 6 shards


@pytest.fixture(scope="module")
def images_ids(sample) -> tuple[np.ndarray, np.ndarray]:
    """Sample images with shuffled, non-contiguous ids (so "sorted by id" and "same ids" mean something)."""
    images = sample.gallery_images[:N_IMAGES]
    ids = np.random.default_rng(0).permutation(N_IMAGES).astype(np.int64) * 7 + 3
    return images, ids


@pytest.fixture(scope="module")
def reference(images_ids) -> tuple[np.ndarray, np.ndarray, str]:
    """Single-process ``embed`` of the same images, sorted by id: what the job must reproduce."""
    images, ids = images_ids
    encoder = load_pretrained()
    order = np.argsort(ids)
    return ids[order], embed(encoder, images)[order], encoder.version


@pytest.fixture(scope="module")
def input_dir(images_ids, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ray_embed") / "input"
    write_image_shards(*images_ids, path, rows_per_file=ROWS_PER_FILE)
    return path


@pytest.fixture(scope="module")
def job_output(ray_local, input_dir, tmp_path_factory) -> tuple[Path, dict]:
    """One 2-worker run, shared by the tests that only read its output."""
    out = tmp_path_factory.mktemp("ray_embed") / "out"
    return out, run_embedding_job(input_dir, out, num_workers=2, batch_size=BATCH)


def _assert_same_as_reference(out: Path, reference) -> None:
    ids, vectors, version = read_embeddings(out)
    ref_ids, ref_vectors, ref_version = reference
    np.testing.assert_array_equal(ids, ref_ids)  # every id once, sorted; none lost, none twice
    assert vectors.dtype == np.float32 and vectors.shape == ref_vectors.shape
    assert np.abs(vectors - ref_vectors).max() <= 1e-5
    assert version == ref_version


# ---- the input files ------------------------------------------------------------------------------
def test_write_image_shards_round_trips(images_ids, input_dir):
    images, ids = images_ids
    files = sorted(input_dir.glob("images-*.parquet"))
    assert len(files) == -(-N_IMAGES // ROWS_PER_FILE)
    table = pq.read_table(files[1])
    assert table.schema.field("id").type == "int64"
    assert json.loads(table.schema.metadata[ray_embed.IMAGE_SHAPE_KEY]) == [28, 28]
    got = np.frombuffer(b"".join(table.column("image").to_pylist()), np.uint8).reshape(-1, 28, 28)
    np.testing.assert_array_equal(table.column("id").to_numpy(), ids[ROWS_PER_FILE : 2 * ROWS_PER_FILE])
    np.testing.assert_array_equal(got, images[ROWS_PER_FILE : 2 * ROWS_PER_FILE])


@pytest.mark.parametrize(
    "images, ids, match",
    [
        (np.zeros((4, 28, 28), np.float32), np.arange(4), "images: expected a uint8 array"),
        (np.zeros((4, 784), np.uint8), np.arange(4), "images: expected a uint8 array"),
        ([[0]], np.arange(1), "images: expected a uint8 array"),
        (np.zeros((0, 28, 28), np.uint8), np.arange(0), "images: empty"),
        (np.zeros((4, 28, 28), np.uint8), np.arange(3), "ids: 3 ids for 4 images"),
        (np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 1, 2]), "ids: must be distinct, 1 appears 2 times"),
        (np.zeros((4, 28, 28), np.uint8), np.array([0, -1, 2, 3]), "ids: must be >= 0, got -1"),
        (np.zeros((4, 28, 28), np.uint8), np.array([0.0, 1, 2, 3]), "ids: expected 1-d integers"),
        (np.zeros((2, 28, 28), np.uint8), np.array([True, False]), "ids: expected 1-d integers"),
        (np.zeros((2, 28, 28), np.uint8), np.array([0, 2**63 + 1], np.uint64), "does not fit int64"),
    ],
)
def test_write_image_shards_refuses_bad_input(images, ids, match, tmp_path):
    with pytest.raises(ScaleError, match=match):
        write_image_shards(images, ids, tmp_path / "in")
    assert not list((tmp_path / "in").glob("*.parquet")) if (tmp_path / "in").exists() else True


def test_write_image_shards_refuses_bad_rows_per_file_and_a_used_folder(images_ids, input_dir):
    with pytest.raises(ScaleError, match="rows_per_file"):
        write_image_shards(*images_ids, input_dir.parent / "x", rows_per_file=0)
    with pytest.raises(ScaleError, match="already holds images"):
        write_image_shards(*images_ids, input_dir)


# ---- the job ----------------------------------------------------------------------------------------
def test_two_workers_equal_single_process_embed(job_output, reference):
    out, report = job_output
    _assert_same_as_reference(out, reference)
    assert report["rows"] == N_IMAGES and report["num_workers"] == 2
    assert report["model_version"] == reference[2] and report["embedding_dim"] == reference[1].shape[1]
    assert sorted(p.name for p in out.glob("part-*.parquet")) == report["files"]
    rows_per_shard = [pq.read_metadata(out / name).num_rows for name in report["files"]]
    assert sum(rows_per_shard) == N_IMAGES and max(rows_per_shard) <= BATCH  # one shard per batch
    assert 0 < report["processing_seconds"] <= report["seconds"]
    assert report["images_per_s"] == pytest.approx(N_IMAGES / report["seconds"])
    assert not (out / ray_embed.STAGING_DIR).exists() or not any((out / ray_embed.STAGING_DIR).iterdir())
    manifest = json.loads((out / ray_embed.MANIFEST_NAME).read_text())
    assert manifest["rows"] == N_IMAGES and sorted(manifest["files"]) == report["files"]
    meta = pq.read_schema(out / report["files"][0]).metadata
    assert meta[ray_embed.MODEL_VERSION_KEY].decode() == reference[2]


def test_one_worker_equals_single_process_embed(ray_local, input_dir, reference, tmp_path):
    report = run_embedding_job(input_dir, tmp_path / "out", num_workers=1, batch_size=BATCH * 3)
    assert report["num_workers"] == 1 and len(report["worker_pids"]) == 1
    _assert_same_as_reference(tmp_path / "out", reference)


def test_a_worker_killed_mid_run_still_stores_every_row_once(ray_local, input_dir, images_ids, reference, tmp_path):
    """The first batch holding a middle row kills its worker process (os._exit: no cleanup, no exception).

    It dies right after writing that batch's shard, the hardest case: the shard is there but
    the driver never heard of it. Ray restarts the actor and retries its task, which writes
    the same content-named shards again (atomically, over the first copies), so the result
    is identical to an undisturbed run. (Dying before writing is the easier case of the two,
    ``_die_after_write=False``; it is left out to keep this file fast.)
    """
    after_write = True
    _, ids = images_ids
    victim = int(ids[N_IMAGES // 2 + 7])
    marker = tmp_path / "died"
    report = run_embedding_job(input_dir, tmp_path / "out", num_workers=2, batch_size=BATCH,
                               _die_on_id=victim, _die_marker=marker, _die_after_write=after_write)
    assert marker.exists(), "no worker died: the fault injection did not fire"
    pid = int(marker.read_text())
    assert pid != os.getpid()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # that worker process is really gone
    assert report["rows"] == N_IMAGES
    _assert_same_as_reference(tmp_path / "out", reference)
    assert report["discarded_files"] == 0  # a retried batch rewrote its shard under the same name


def test_the_job_refuses_an_output_folder_with_shards(job_output, input_dir):
    out, _ = job_output
    with pytest.raises(ScaleError, match="output_dir: .* already holds embedding shards"):
        run_embedding_job(input_dir, out)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_workers": 0}, "num_workers"),
        ({"num_workers": 1.5}, "num_workers"),
        ({"num_workers": True}, "num_workers"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": "64"}, "batch_size"),
        ({"forward_batch": -1}, "forward_batch"),
        ({"checkpoint": 3}, "checkpoint: expected None, a checkpoint path or an Encoder"),
        ({"_die_on_id": 3}, "_die_on_id and _die_marker go together"),
    ],
)
def test_the_job_refuses_bad_parameters(input_dir, tmp_path, kwargs, match):
    with pytest.raises(ScaleError, match=match):
        run_embedding_job(input_dir, tmp_path / "out", **kwargs)


def test_the_job_refuses_more_workers_than_cpus(ray_local, input_dir, tmp_path):
    with pytest.raises(ScaleError, match="num_workers: 3 workers need 3 CPUs, the Ray cluster has 2"):
        run_embedding_job(input_dir, tmp_path / "out", num_workers=3)
    assert not list((tmp_path / "out").rglob("*.parquet")) if (tmp_path / "out").exists() else True


def test_the_job_refuses_a_missing_checkpoint(input_dir, tmp_path):
    with pytest.raises(ScaleError, match="checkpoint: .*nope.pt"):
        run_embedding_job(input_dir, tmp_path / "out", checkpoint=tmp_path / "nope.pt")


def test_the_job_refuses_bad_input_folders(input_dir, tmp_path):
    with pytest.raises(ScaleError, match="input_dir: .*missing is not a folder"):
        run_embedding_job(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScaleError, match="input_dir: .*empty holds no .parquet files"):
        run_embedding_job(tmp_path / "empty", tmp_path / "out")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ScaleError, match="input_dir: .*a.parquet is not a readable Parquet file"):
        run_embedding_job(bad, tmp_path / "out")
    other = tmp_path / "other"
    other.mkdir()
    import pyarrow as pa

    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int64()), "pixels": pa.array([b"a", b"b"])}), other / "x.parquet")
    with pytest.raises(ScaleError, match="x.parquet has columns .* expected \\(id int64, image binary\\)"):
        run_embedding_job(other, tmp_path / "out")
    mixed = tmp_path / "mixed"
    shutil.copytree(input_dir, mixed)
    write_image_shards(np.zeros((2, 8, 8), np.uint8), [10**6, 10**6 + 1], tmp_path / "small")
    shutil.copy(tmp_path / "small" / "images-00000.parquet", mixed / "images-99999.parquet")
    with pytest.raises(ScaleError, match="images-99999.parquet holds \\[8, 8\\] images, the files before it \\[28, 28\\]"):
        run_embedding_job(mixed, tmp_path / "out")


# ---- reading the output -----------------------------------------------------------------------------
def test_read_embeddings_refuses_duplicate_ids(job_output, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(job_output[0], out)
    first = sorted(out.glob("part-*.parquet"))[0]
    shutil.copy(first, out / "part-zz-copy.parquet")  # a shard stored twice
    with pytest.raises(ScaleError, match=f"appears twice, in .*{first.name} and .*part-zz-copy.parquet"):
        read_embeddings(out)


def test_read_embeddings_refuses_mixed_model_versions(job_output, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(job_output[0], out)
    last = sorted(out.glob("part-*.parquet"))[-1]
    table = pq.read_table(last)
    pq.write_table(table.replace_schema_metadata({ray_embed.MODEL_VERSION_KEY: b"cnn-000000000000"}), last)
    with pytest.raises(ScaleError, match=f"{last.name} was embedded by cnn-000000000000, .* mixed model versions"):
        read_embeddings(out)


def test_read_embeddings_refuses_shards_the_manifest_does_not_record(job_output, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(job_output[0], out)
    gone = sorted(out.glob("part-*.parquet"))[2]
    gone.unlink()
    with pytest.raises(ScaleError, match=f"shards differ from .*_manifest.json: not recorded \\[\\], missing \\['{gone.name}'\\]"):
        read_embeddings(out)


def test_read_embeddings_refuses_a_commit_that_never_wrote_its_manifest(job_output, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(job_output[0], out)
    (out / ray_embed.MANIFEST_NAME).unlink()  # what a driver killed mid-commit leaves: shards, no manifest
    with pytest.raises(ScaleError, match="no _manifest.json: the job's commit did not finish"):
        read_embeddings(out)


@pytest.mark.parametrize("folder", [3, None, b"bytes"])
def test_folders_that_are_not_paths_are_named(folder):
    with pytest.raises(ScaleError, match="output_dir: expected a folder path or URI"):
        read_embeddings(folder)


def test_read_embeddings_refuses_missing_and_empty_folders(tmp_path):
    with pytest.raises(ScaleError, match="output_dir: .*nothing is not a folder"):
        read_embeddings(tmp_path / "nothing")
    with pytest.raises(ScaleError, match="holds no part-\\*.parquet shards"):
        read_embeddings(tmp_path)


def test_importing_the_module_does_not_import_ray():
    code = "import sys, visual_search.scale.ray_embed; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
