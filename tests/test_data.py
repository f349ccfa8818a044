"""Fashion-MNIST loading: IDX parsing, checksums, the search order, torchvision's download, the sample."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import threading
import tracemalloc

import numpy as np
import pytest
from conftest import needs_full_data

from visual_search import config, data
from visual_search.data import DataError


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def tiny_split(tmp_path):
    """A fake 'test' split of 6 images written as real IDX files, with its checksums."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 9, 8, 7], dtype=np.uint8)
    checksums = dict(data.SHA256)
    for name, array, compress in (("t10k-images-idx3-ubyte", images, True), ("t10k-labels-idx1-ubyte", labels, False)):
        raw = _idx_bytes(array)
        checksums[name] = hashlib.sha256(raw).hexdigest()
        (tmp_path / (name + ".gz" if compress else name)).write_bytes(gzip.compress(raw) if compress else raw)
    return tmp_path, images, labels.astype(np.int64), checksums


def test_read_idx_gz_and_raw(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx_bytes(array))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(array)))
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a"), array)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a.gz"), array)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\x01\x02\x08\x01\x00\x00\x00\x01\x00", "bad magic"),
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00", "not uint8"),
        (b"\x00\x00\x08\x02\x00\x00", "truncated IDX header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x00", r"header says shape \(5,\)"),
    ],
)
def test_read_idx_rejects_bad_files(tmp_path, payload, message):
    (tmp_path / "bad").write_bytes(payload)
    with pytest.raises(DataError, match=message):
        data.read_idx(tmp_path / "bad")


def test_load_from_a_folder(tiny_split):
    folder, images, labels, checksums = tiny_split
    got_images, got_labels = data.load_fashion_mnist("test", data_dir=folder, checksums=checksums)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.dtype == np.uint8 and got_labels.dtype == np.int64
    got_images[0] = 0  # callers get their own writable copy; the cache is untouched
    np.testing.assert_array_equal(data.load_fashion_mnist("test", data_dir=folder, checksums=checksums)[0], images)


def test_checksum_mismatch_names_the_file(tmp_path):
    # the real files' sizes (10,000 images and labels) but not their contents
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.zeros((10_000, 28, 28), np.uint8))))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(10_000, np.uint8)))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: checksum mismatch \(sha256 of the uncompressed bytes"):
        data.load_fashion_mnist("test", data_dir=tmp_path)  # the real checksums: these are not the real files


def test_a_real_file_name_must_have_the_real_size(tiny_split):
    folder, *_ = tiny_split
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: header says shape \(6, 28, 28\) \(4,720 bytes\), but this Fashion-MNIST file has 7,840,016"):
        data.load_fashion_mnist("test", data_dir=folder)  # the real checksums, so the real sizes are expected


def test_the_known_sizes_match_the_shapes():
    assert set(data.EXPECTED_BYTES) == set(data.SHA256)
    for name, n in (("train-images-idx3-ubyte", 60_000), ("t10k-images-idx3-ubyte", 10_000)):
        assert data.EXPECTED_BYTES[name] == 16 + n * 28 * 28
    for name, n in (("train-labels-idx1-ubyte", 60_000), ("t10k-labels-idx1-ubyte", 10_000)):
        assert data.EXPECTED_BYTES[name] == 8 + n


def _peak_bytes(fn) -> int:
    """Peak Python memory (tracemalloc) while ``fn`` runs."""
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_a_gzip_bomb_is_refused_without_inflating_it(tmp_path):
    bomb = tmp_path / "bomb.gz"
    bomb.write_bytes(gzip.compress(_idx_bytes(np.arange(4, dtype=np.uint8)) + bytes(32 * 1024**2), compresslevel=9))  # 32 KB on disk
    assert bomb.stat().st_size < 100_000

    def read(**kwargs):
        with pytest.raises(DataError, match=r"bomb\.gz: longer than its header says \(shape \(4,\), 12 bytes\)"):
            data.read_idx(bomb, **kwargs)

    assert _peak_bytes(lambda: read(max_bytes=64)) < 2 * 1024**2  # reading all of it would take 32 MiB
    assert _peak_bytes(read) < 2 * 1024**2


def test_a_plain_file_longer_than_its_header_is_refused(tmp_path):
    (tmp_path / "long").write_bytes(_idx_bytes(np.arange(4, dtype=np.uint8)) + b"\0")
    with pytest.raises(DataError, match=r"long: longer than its header says"):
        data.read_idx(tmp_path / "long")


def test_a_header_promising_too_much_is_refused_before_reading(tmp_path):
    huge = bytes([0, 0, 0x08, 3]) + b"".join(n.to_bytes(4, "big") for n in (100_000, 1_000, 1_000))  # 100 GB promised
    (tmp_path / "huge.gz").write_bytes(gzip.compress(huge + bytes(1000)))
    with pytest.raises(DataError, match=r"huge\.gz: header says shape \(100000, 1000, 1000\) \(100,000,000,016 bytes\), more than the 268,435,456 bytes allowed"):
        data.read_idx(tmp_path / "huge.gz")
    (tmp_path / "small").write_bytes(_idx_bytes(np.zeros((2, 3, 4), np.uint8)))
    with pytest.raises(DataError, match=r"small: header says shape \(2, 3, 4\) \(40 bytes\), more than the 16 bytes allowed \(max_bytes\)"):
        data.read_idx(tmp_path / "small", max_bytes=16)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "small", max_bytes=40), np.zeros((2, 3, 4)))
    # a file named like a real one may not promise more than the real one has
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(20_000, np.uint8)))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: .*more than the 10,008 bytes allowed"):
        data.read_idx(tmp_path / "t10k-labels-idx1-ubyte")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(DataError, match="max_bytes must be an integer >= 1"):
            data.read_idx(tmp_path / "small", max_bytes=bad)


def test_a_real_file_name_with_a_huge_header_is_refused_before_inflating(tmp_path):
    promised = bytes([0, 0, 0x08, 3]) + b"".join(n.to_bytes(4, "big") for n in (10_000_000, 28, 28))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(promised + bytes(16 * 1024**2)))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(10_000, np.uint8)))

    def load():
        with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: header says shape \(10000000, 28, 28\).*has 7,840,016 bytes"):
            data.load_fashion_mnist("test", data_dir=tmp_path)

    assert _peak_bytes(load) < 2 * 1024**2


def test_a_truncated_gzip_is_a_data_error(tmp_path):
    raw = gzip.compress(_idx_bytes(np.arange(10_000, dtype=np.uint8) % 251))
    (tmp_path / "cut.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"cut\.gz: cannot read"):
        data.read_idx(tmp_path / "cut.gz")


def test_read_idx_gives_a_writable_array(tmp_path):
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3))))
    array = data.read_idx(tmp_path / "a.gz")
    array[0, 0] = 9
    assert array.flags.writeable and array.dtype == np.uint8 and array.shape == (2, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"gallery_per_class": 0}, "gallery_per_class must be"), ({"queries_per_class": 2.5}, "queries_per_class must be"), ({"seed": -1}, "seed must be")],
)
def test_build_sample_checks_its_arguments(kwargs, message):
    with pytest.raises(DataError, match=message):
        data.build_sample(**kwargs)


def test_search_order_prefers_visual_search_data(tiny_split, monkeypatch, tmp_path):
    folder, images, _, checksums = tiny_split
    monkeypatch.setenv("VISUAL_SEARCH_DATA", str(folder))
    assert data.candidate_dirs()[0] == folder
    assert data.candidate_dirs()[1:] == [config.cache_dir() / "fashion-mnist", config.DEBIAN_FASHION_MNIST_DIR]
    np.testing.assert_array_equal(data.load_fashion_mnist("test", checksums=checksums)[0], images)


def test_no_source_says_how_to_get_the_data(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as info:
        data.load_fashion_mnist("train", data_dir=tmp_path)
    assert "VISUAL_SEARCH_DATA" in str(info.value) and "make data" in str(info.value)


def test_unknown_split():
    with pytest.raises(DataError, match=r"split must be one of \['test', 'train'\], got 'validation'"):
        data.load_fashion_mnist("validation")


@pytest.fixture
def local_mirror(tiny_split):
    """Serve the tiny split's files over HTTP on 127.0.0.1, as a Fashion-MNIST mirror would."""
    folder, *_ = tiny_split
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress((folder / "t10k-labels-idx1-ubyte").read_bytes()))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", tiny_split
    server.shutdown()
    server.server_close()


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_torchvision_download_from_a_local_mirror(local_mirror, tmp_path):
    url, (folder, images, labels, checksums) = local_mirror
    names = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    resources = [(n, _md5(folder / n)) for n in names]
    dest = tmp_path / "downloaded"
    # the first mirror is dead; the downloader must fall through to the next
    root = data.download_fashion_mnist(dest, mirrors=["http://127.0.0.1:9/", url], resources=resources)
    assert sorted(p.name for p in root.iterdir()) == names
    got_images, got_labels = data.load_fashion_mnist("test", data_dir=root, checksums=checksums)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_download_with_wrong_md5_fails_clearly(local_mirror, tmp_path):
    url, _ = local_mirror
    with pytest.raises(DataError, match="could not download t10k-images-idx3-ubyte.gz"):
        data.download_fashion_mnist(tmp_path / "d", mirrors=[url], resources=[("t10k-images-idx3-ubyte.gz", "0" * 32)])
    assert not (tmp_path / "d" / "t10k-images-idx3-ubyte.gz").exists()  # no corrupt file left behind


def test_class_names_and_super_categories():
    assert len(data.CLASS_NAMES) == 10
    grouped = sorted(c for labels in data.SUPER_CATEGORIES.values() for c in labels)
    assert grouped == list(range(10))  # every class in exactly one super-category
    assert data.SUPER_CATEGORY_NAMES[data.SUPER_CATEGORY_OF_LABEL[7]] == "footwear"  # Sneaker


def test_committed_sample_is_small_and_balanced(sample):
    assert data.SAMPLE_PATH.stat().st_size < 2_000_000
    assert sample.gallery_images.shape == (2000, 28, 28) and sample.gallery_images.dtype == np.uint8
    assert sample.query_images.shape == (500, 28, 28)
    assert np.bincount(sample.gallery_labels).tolist() == [200] * 10
    assert np.bincount(sample.query_labels).tolist() == [50] * 10
    assert len(np.unique(sample.gallery_index)) == 2000


def test_missing_sample_file(tmp_path):
    with pytest.raises(DataError, match="build_datasets.py"):
        data.load_sample(tmp_path / "nope.npz")


@needs_full_data
def test_real_fashion_mnist():
    for split, n in (("train", 60_000), ("test", 10_000)):
        images, labels = data.load_fashion_mnist(split)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        assert np.bincount(labels).tolist() == [n // 10] * 10


@needs_full_data
def test_committed_sample_comes_from_the_real_data(sample):
    train_images, train_labels = data.load_fashion_mnist("train")
    test_images, test_labels = data.load_fashion_mnist("test")
    np.testing.assert_array_equal(train_images[sample.gallery_index], sample.gallery_images)
    np.testing.assert_array_equal(train_labels[sample.gallery_index], sample.gallery_labels)
    np.testing.assert_array_equal(test_images[sample.query_index], sample.query_images)
    np.testing.assert_array_equal(test_labels[sample.query_index], sample.query_labels)


def test_corrupt_gzip_is_a_data_error(tmp_path):
    raw = gzip.compress(_idx_bytes(np.arange(100, dtype=np.uint8)))
    broken = bytearray(raw)
    broken[20:40] = b"\xff" * 20  # damage the deflate stream, keep the gzip magic
    (tmp_path / "x.gz").write_bytes(bytes(broken))
    with pytest.raises(DataError, match=r"x\.gz: cannot read"):
        data.read_idx(tmp_path / "x.gz")


def _write_split(folder, value) -> dict[str, str]:
    """Write a one-image 'test' split whose pixels are all ``value``; return its checksums."""
    folder.mkdir(parents=True, exist_ok=True)
    checksums = dict(data.SHA256)
    for name, array in (("t10k-images-idx3-ubyte", np.full((1, 28, 28), value)), ("t10k-labels-idx1-ubyte", np.array([3]))):
        raw = _idx_bytes(array)
        (folder / name).write_bytes(raw)
        checksums[name] = hashlib.sha256(raw).hexdigest()
    return checksums


@pytest.fixture
def three_sources(tmp_path, monkeypatch):
    """A repo cache and a 'Debian' folder in tmp_path, and no VISUAL_SEARCH_DATA."""
    monkeypatch.delenv("VISUAL_SEARCH_DATA", raising=False)
    monkeypatch.setenv("VISUAL_SEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(config, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    return tmp_path


def test_repo_cache_comes_before_debian(three_sources):
    cache_sums = _write_split(three_sources / "cache" / "fashion-mnist", 1)
    _write_split(three_sources / "debian", 2)
    assert data.find_data_dir("test", download=False) == three_sources / "cache" / "fashion-mnist"
    assert (data.load_fashion_mnist("test", checksums=cache_sums, download=False)[0] == 1).all()


def test_debian_is_used_when_the_cache_is_empty(three_sources):
    checksums = _write_split(three_sources / "debian", 2)
    assert data.find_data_dir("test", download=False) == three_sources / "debian"
    assert (data.load_fashion_mnist("test", checksums=checksums, download=False)[0] == 2).all()


def test_download_is_the_last_resort_and_its_failure_says_how_to_get_the_data(three_sources, monkeypatch):
    calls = []

    def refuse(root=None, **kwargs):
        calls.append(root)
        raise DataError("could not download t10k-images-idx3-ubyte.gz\n" + data.HOW_TO_GET_DATA)

    monkeypatch.setattr(data, "download_fashion_mnist", refuse)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist("test")
    assert calls == [None]  # tried once, after every folder came up empty
    with pytest.raises(DataError, match="no Fashion-MNIST test files found"):
        data.load_fashion_mnist("test", download=False)
    assert calls == [None]
