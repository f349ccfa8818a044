"""Fashion-MNIST: the real 70,000-image dataset the whole course runs on.

``load_fashion_mnist(split)`` looks for the four IDX files in this order and
uses the first folder that has the split's two files:

1. ``$VISUAL_SEARCH_DATA``;
2. the git-ignored cache in the repo (``.cache/fashion-mnist``);
3. Debian's package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``);
4. torchvision's download into that cache (needs a network).

Every file is checked against the SHA-256 of its *uncompressed* bytes, so the
same check covers Debian's re-compressed ``.gz`` files, torchvision's originals
and plain uncompressed copies.

Decompression is bounded: the reader parses the IDX header first, refuses a
size above the limit (for the real files, exactly their known size; otherwise
``max_bytes``), inflates exactly the bytes the header promises and refuses a file
that goes on after them. A small ``.gz`` that would expand to gigabytes (a
"gzip bomb") is refused after a few kilobytes, whatever its header says.

The committed sample (``datasets/fashion_mnist_sample.npz``) is loaded with
``load_sample()``; fast mode and the unit tests use it.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from visual_search import config
from visual_search._checks import check_int, check_seed
from visual_search.errors import DataError  # noqa: F401  (re-exported: raised here, importable from here)

#: The ten classes, in label order (label 0 is "T-shirt/top").
CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: Coarser groups a shopper would recognise; used for the graded evaluation set
#: (an item of the same super-category is "a bit similar").
SUPER_CATEGORIES: dict[str, tuple[int, ...]] = {
    "tops": (0, 2, 4, 6),
    "bottoms": (1,),
    "dresses": (3,),
    "footwear": (5, 7, 9),
    "bags": (8,),
}

#: Super-category index for each class label (index into ``SUPER_CATEGORY_NAMES``).
SUPER_CATEGORY_NAMES: tuple[str, ...] = tuple(SUPER_CATEGORIES)
SUPER_CATEGORY_OF_LABEL: np.ndarray = np.empty(len(CLASS_NAMES), dtype=np.int64)
for _s, _labels in enumerate(SUPER_CATEGORIES.values()):
    SUPER_CATEGORY_OF_LABEL[list(_labels)] = _s

#: The file names of each split (images, labels), as published.
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: SHA-256 of each file's uncompressed bytes.
SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

#: The uncompressed size of each real file (the IDX header plus 28 x 28 bytes per image, or one byte per label).
#: When a file's real checksum is expected, its header must promise exactly this many bytes.
EXPECTED_BYTES: dict[str, int] = {
    "train-images-idx3-ubyte": 47_040_016,
    "train-labels-idx1-ubyte": 60_008,
    "t10k-images-idx3-ubyte": 7_840_016,
    "t10k-labels-idx1-ubyte": 10_008,
}

#: ``read_idx`` refuses an IDX file whose header promises more bytes than this (uncompressed).
DEFAULT_MAX_IDX_BYTES = 256 * 1024**2

_CHUNK = 1 << 20  # inflate in 1 MiB steps

SAMPLE_PATH = config.DATASETS_DIR / "fashion_mnist_sample.npz"

HOW_TO_GET_DATA = (
    "Get Fashion-MNIST in one of these ways:\n"
    "  * on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
    f"(files land in {config.DEBIAN_FASHION_MNIST_DIR});\n"
    "  * with a network: make data (torchvision downloads into .cache/fashion-mnist);\n"
    "  * or put the four *-ubyte[.gz] files in a folder and set VISUAL_SEARCH_DATA to it."
)




def read_idx(path: str | Path, max_bytes: int = DEFAULT_MAX_IDX_BYTES) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzip-compressed or not, without inflating more than it promises.

    The header is 2 zero bytes, a type byte (0x08 = uint8), a byte giving the
    number of dimensions, then one big-endian uint32 per dimension. The header is
    read first; the size it promises is checked against ``max_bytes`` (and, for a
    file named like a real Fashion-MNIST file, against that file's known size)
    before the data is read.

    Args:
        path: the ``.gz`` or uncompressed file.
        max_bytes: refuse a file whose header promises more uncompressed bytes than this.

    Returns:
        A (writable) uint8 array of the shape the header gives.

    Raises:
        DataError: if the file is not valid IDX, promises more than the limit, is
            shorter or longer than its header says, or is a corrupt ``.gz``.
    """
    path = Path(path)
    max_bytes = check_int(max_bytes, "max_bytes", low=1, error=DataError)
    known = EXPECTED_BYTES.get(path.name.removesuffix(".gz"))
    raw = _read_idx_bytes(path, max_bytes if known is None else min(max_bytes, known))
    return _parse_idx(raw, path)


def _read_idx_bytes(path: Path, max_bytes: int, exact_bytes: int | None = None) -> bytearray:
    """The uncompressed bytes of an IDX file (header included), reading no more than its header promises.

    Args:
        path: the ``.gz`` or uncompressed file.
        max_bytes: refuse a header that promises more than this.
        exact_bytes: if given, the header must promise exactly this many bytes.

    Raises:
        DataError: as ``read_idx``.
    """
    try:
        with open(path, "rb") as f:
            compressed = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            if not compressed:
                return _read_bounded(f, path, max_bytes, exact_bytes)
            with gzip.GzipFile(fileobj=f) as g:
                return _read_bounded(g, path, max_bytes, exact_bytes)
    except (OSError, EOFError, zlib.error) as e:  # missing, unreadable, or a corrupt .gz
        raise DataError(f"{path}: cannot read ({e}); delete it and fetch it again.\n{HOW_TO_GET_DATA}") from e


def _read_bounded(stream: BinaryIO, path: Path, max_bytes: int, exact_bytes: int | None) -> bytearray:
    head = _read_up_to(stream, 4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    if head[2] != 0x08:
        raise DataError(f"{path}: IDX type 0x{head[2]:02x} is not uint8 (0x08)")
    ndim = head[3]
    dims = _read_up_to(stream, 4 * ndim)
    if ndim == 0 or len(dims) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
    header = 4 + 4 * ndim
    total = header + math.prod(shape)
    if exact_bytes is not None and total != exact_bytes:
        raise DataError(
            f"{path}: header says shape {shape} ({total:,} bytes), but this Fashion-MNIST file has {exact_bytes:,} bytes; "
            f"the file is corrupt or not Fashion-MNIST; delete it and fetch it again.\n{HOW_TO_GET_DATA}"
        )
    if total > max_bytes:
        raise DataError(f"{path}: header says shape {shape} ({total:,} bytes), more than the {max_bytes:,} bytes allowed (max_bytes); refusing to read it")
    buf = bytearray(total)
    buf[:header] = head + dims
    view = memoryview(buf)
    filled = header
    while filled < total:
        n = stream.readinto(view[filled : min(total, filled + _CHUNK)])
        if not n:
            raise DataError(f"{path}: header says shape {shape} ({total:,} bytes) but the file has only {filled:,} bytes (truncated)")
        filled += n
    if stream.read(1):  # also makes gzip check the stream's CRC and length
        raise DataError(f"{path}: longer than its header says (shape {shape}, {total:,} bytes); refusing to read on")
    return buf


def _read_up_to(stream: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes (fewer only at the end of the stream)."""
    parts, got = [], 0
    while got < n:
        part = stream.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _parse_idx(raw: bytearray, path: Path) -> np.ndarray:
    """View the bytes ``_read_idx_bytes`` checked as the array their header describes."""
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def _read_verified(path: Path, name: str, checksums: dict[str, str]) -> np.ndarray:
    """Read ``path`` (the file ``name``) within its size bound and check its SHA-256 against ``checksums[name]``.

    When the real file's checksum is expected, the header must promise exactly the
    real file's size (``EXPECTED_BYTES``); with other checksums (a test's own
    files) the bound is ``DEFAULT_MAX_IDX_BYTES``.
    """
    exact = EXPECTED_BYTES.get(name) if checksums[name] == SHA256.get(name) else None
    raw = _read_idx_bytes(path, DEFAULT_MAX_IDX_BYTES, exact_bytes=exact)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != checksums[name]:
        raise DataError(
            f"{path}: checksum mismatch (sha256 of the uncompressed bytes is {digest}, "
            f"expected {checksums[name]}). The file is corrupt or not Fashion-MNIST; "
            "delete it and fetch it again.\n" + HOW_TO_GET_DATA
        )
    return _parse_idx(raw, path)


def candidate_dirs() -> list[Path]:
    """Return the folders ``load_fashion_mnist`` searches, in order."""
    dirs = []
    if os.environ.get("VISUAL_SEARCH_DATA"):
        dirs.append(Path(os.environ["VISUAL_SEARCH_DATA"]))
    dirs += [config.cache_dir() / "fashion-mnist", config.DEBIAN_FASHION_MNIST_DIR]
    return dirs


def download_fashion_mnist(
    root: str | Path | None = None,
    *,
    mirrors: list[str] | None = None,
    resources: list[tuple[str, str]] | None = None,
) -> Path:
    """Download the four ``.gz`` files with torchvision's downloader.

    torchvision checks each file's MD5 and tries the next mirror on failure.

    Args:
        root: destination folder (default: ``.cache/fashion-mnist`` in the repo).
        mirrors: base URLs to try in order (default: torchvision's own list).
        resources: ``(file name, md5)`` pairs (default: torchvision's own list).

    Returns:
        The folder holding the files.

    Raises:
        DataError: if no mirror delivered a file whose MD5 matches.
    """
    from torchvision.datasets import FashionMNIST
    from torchvision.datasets.utils import check_integrity, download_url

    root = Path(root) if root is not None else config.cache_dir() / "fashion-mnist"
    root.mkdir(parents=True, exist_ok=True)
    mirrors = list(mirrors if mirrors is not None else FashionMNIST.mirrors)
    resources = list(resources if resources is not None else FashionMNIST.resources)
    for filename, md5 in resources:
        if check_integrity(str(root / filename), md5):
            continue
        errors = []
        for mirror in mirrors:
            try:
                download_url(f"{mirror.rstrip('/')}/{filename}", str(root), filename=filename, md5=md5)
                break
            except Exception as e:  # urllib and torchvision raise several types; we report them all
                errors.append(f"{mirror}: {e}")
                (root / filename).unlink(missing_ok=True)
        else:
            raise DataError(f"could not download {filename}:\n  " + "\n  ".join(errors) + "\n" + HOW_TO_GET_DATA)
    return root


def load_fashion_mnist(
    split: str,
    *,
    data_dir: str | Path | None = None,
    download: bool = True,
    checksums: dict[str, str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load a Fashion-MNIST split.

    Args:
        split: "train" (60,000 images) or "test" (10,000 images).
        data_dir: read only this folder instead of searching (see the module docstring).
        download: when no folder has the files, download them with torchvision.
        checksums: SHA-256 per file name (default: the real files' ``SHA256``).

    Returns:
        ``(images, labels)``: uint8 ``[N, 28, 28]`` and int64 ``[N]``, fresh copies
        of an in-process cache (so the files are read and verified once).

    Raises:
        DataError: for an unknown split, corrupt files, or when no source has the data.
    """
    if split not in SPLIT_FILES:
        raise DataError(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    checksums = dict(SHA256 if checksums is None else checksums)
    directory = find_data_dir(split, data_dir=data_dir, download=download)
    images, labels = _load_split(directory.resolve(), split, tuple(sorted(checksums.items())))
    return images.copy(), labels.copy()


def find_data_dir(split: str, *, data_dir: str | Path | None = None, download: bool = True) -> Path:
    """Return the first folder holding ``split``'s two files, downloading them if allowed.

    Raises:
        DataError: when no folder has them (and the download is off or failed).
    """
    dirs = [Path(data_dir)] if data_dir is not None else candidate_dirs()
    for directory in dirs:
        if all(_find_file(directory, name) for name in SPLIT_FILES[split]):
            return directory
    if download and data_dir is None:
        return download_fashion_mnist()  # raises DataError, with how-to, when every mirror fails
    raise DataError(f"no Fashion-MNIST {split} files found in {[str(d) for d in dirs]}.\n{HOW_TO_GET_DATA}")


@functools.lru_cache(maxsize=8)
def _load_split(directory: Path, split: str, checksums: tuple[tuple[str, str], ...]) -> tuple[np.ndarray, np.ndarray]:
    sums = dict(checksums)
    image_name, label_name = SPLIT_FILES[split]
    images = _read_verified(_find_file(directory, image_name), image_name, sums)
    labels = _read_verified(_find_file(directory, label_name), label_name, sums).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{directory}: {split} images {images.shape} and labels {labels.shape} do not match")
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise DataError(f"{directory}: {split} labels go up to {labels.max()}, but there are {len(CLASS_NAMES)} classes")
    return images, labels


@dataclass(frozen=True)
class Sample:
    """The small, balanced, committed sample: a gallery to search and queries to search with.

    Attributes:
        gallery_images: uint8 ``[G, 28, 28]`` from the train split.
        gallery_labels: int64 ``[G]``.
        gallery_index: int64 ``[G]``, each image's index in the train split.
        query_images: uint8 ``[Q, 28, 28]`` from the test split.
        query_labels: int64 ``[Q]``.
        query_index: int64 ``[Q]``, each image's index in the test split.
    """

    gallery_images: np.ndarray
    gallery_labels: np.ndarray
    gallery_index: np.ndarray
    query_images: np.ndarray
    query_labels: np.ndarray
    query_index: np.ndarray


def build_sample(gallery_per_class: int = 200, queries_per_class: int = 50, seed: int = 0) -> Sample:
    """Draw a class-balanced sample from the real data (what ``datasets/build_datasets.py`` commits).

    Args:
        gallery_per_class: gallery images per class, drawn from the train split.
        queries_per_class: query images per class, drawn from the test split.
        seed: the random seed; the same seed gives the same sample.

    Returns:
        A ``Sample``, each part sorted by label and then by source index.

    Raises:
        DataError: for a count that is not a positive integer or exceeds a class's
            images, a bad seed, or data that cannot be loaded.
    """
    gallery_per_class = check_int(gallery_per_class, "gallery_per_class", low=1, error=DataError)
    queries_per_class = check_int(queries_per_class, "queries_per_class", low=1, error=DataError)
    rng = np.random.default_rng(check_seed(seed, "seed", error=DataError))

    def draw(split: str, per_class: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images, labels = load_fashion_mnist(split)
        fewest = int(np.bincount(labels, minlength=len(CLASS_NAMES)).min())
        if per_class > fewest:
            raise DataError(f"{split}: cannot draw {per_class} images per class; the smallest class has {fewest}")
        index = np.concatenate(
            [np.sort(rng.choice(np.flatnonzero(labels == c), per_class, replace=False)) for c in range(len(CLASS_NAMES))]
        ).astype(np.int64)
        return images[index], labels[index], index

    return Sample(*draw("train", gallery_per_class), *draw("test", queries_per_class))


def load_sample(path: str | Path = SAMPLE_PATH) -> Sample:
    """Load the committed sample (2,000 gallery and 500 query images).

    Raises:
        DataError: if the file is missing or lacks a field.
    """
    path = Path(path)
    try:
        with np.load(path) as z:
            return Sample(**{name: z[name] for name in Sample.__dataclass_fields__})
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{path}: cannot load the sample ({e}); rebuild it with `python datasets/build_datasets.py`") from e


def copy_data(destination: str | Path) -> Path:
    """Copy the four verified Fashion-MNIST files into ``destination`` (for an offline classroom).

    ``make wheelhouse`` puts them beside the wheels; ``make data`` on a laptop copies them
    back into the cache, where ``load_fashion_mnist`` finds them with no network.

    Returns:
        The destination folder.

    Raises:
        DataError: the data cannot be found (or downloaded), or a file fails its checksum.
    """
    import shutil

    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for split, names in SPLIT_FILES.items():
        load_fashion_mnist(split)  # verifies both files' checksums before anything is copied
        source = find_data_dir(split)
        for name in names:
            path = _find_file(source, name)
            shutil.copyfile(path, destination / path.name)
    return destination


def main(argv: list[str] | None = None) -> None:
    """``python -m visual_search.data [--copy-to DIR]``: find (or download) and verify both splits."""
    import argparse

    parser = argparse.ArgumentParser(description="Find (or download) Fashion-MNIST and verify its checksums.")
    parser.add_argument("--copy-to", metavar="DIR", help="also copy the four verified files into DIR (make wheelhouse)")
    args = parser.parse_args(argv)
    for split in SPLIT_FILES:
        images, labels = load_fashion_mnist(split)
        print(f"Fashion-MNIST {split:5s}: {images.shape} {images.dtype}, labels {labels.shape}, checksums OK, from {find_data_dir(split)}")
    if args.copy_to:
        print(f"copied the four files to {copy_data(args.copy_to)}")


if __name__ == "__main__":
    main()
