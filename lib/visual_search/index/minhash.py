"""Near-duplicate detection with MinHash LSH (datasketch): LSH for *sets*, not vectors.

The vector indexes answer "which images look most alike?". A different question
matters before indexing: "is this upload a copy of an image we already have?"
(re-uploads, re-encodes, slightly brightened or noised copies). Copies should be
collapsed, not ranked; at 100B+ images that removes a large share of the index.

For that, an image becomes a **set** of tokens (here: the cells that are "on" in
its binarised 14x14 silhouette), and two images are near-duplicates when their
**Jaccard similarity** ``|A & B| / |A | B|`` is high. **MinHash** (Broder, 1997)
compresses a set to ``num_perm`` numbers such that the fraction of equal numbers
estimates the Jaccard similarity. **MinHash LSH** bands those numbers so that
pairs above a Jaccard ``threshold`` collide in some band with high probability:
a candidate look-up without comparing against every stored set.

Why not use it for similarity search? Its notion of "alike" is set overlap of
tokens chosen by hand; learned embeddings capture far more (chapter 04), and the
random-hyperplane LSH in ``lsh.py`` is the vector analogue (it estimates angles,
as MinHash estimates Jaccard).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
from datasketch import MinHash, MinHashLSH

from visual_search._checks import check_int, check_real, check_seed
from visual_search.errors import VectorIndexError


def image_tokens(image: np.ndarray, cell: int = 2, threshold: float = 0.3) -> set[bytes]:
    """The set of "on" cells of an image's binarised, down-sampled silhouette.

    Args:
        image: uint8 ``[H, W]`` (or float in [0, 1]) grayscale image; H and W divisible by ``cell``.
        cell: side of the square cells averaged together (2: 28x28 -> 14x14), so a
            one-pixel change barely moves the set.
        threshold: a cell is "on" when its mean intensity exceeds this fraction of full scale.

    Returns:
        Tokens (the cell index as bytes). An all-dark image gives the empty set.
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.shape[0] % cell or image.shape[1] % cell:
        raise VectorIndexError(f"image_tokens: expected a 2-D image with sides divisible by cell={cell}, got shape {image.shape}")
    scale = 255.0 if image.dtype == np.uint8 else 1.0
    h, w = image.shape[0] // cell, image.shape[1] // cell
    cells = image.reshape(h, cell, w, cell).mean(axis=(1, 3)) / scale
    return {int(i).to_bytes(4, "little") for i in np.flatnonzero(cells.ravel() > threshold)}


def jaccard(a: set, b: set) -> float:
    """Exact Jaccard similarity (1.0 for two empty sets)."""
    return len(a & b) / len(a | b) if a or b else 1.0


class NearDuplicateIndex:
    """MinHash LSH over image token sets: add images under keys, query for likely copies.

    Args:
        threshold: Jaccard similarity above which two images count as near-duplicates.
        num_perm: MinHash length; more is more accurate and slower (error ~ 1/sqrt(num_perm)).
        seed: for MinHash's hash permutations.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, seed: int = 1) -> None:
        self.threshold = check_real(threshold, "minhash: threshold", low=0, high=1, low_open=True, high_open=True, error=VectorIndexError)
        # datasketch's band/row optimisation grows with num_perm squared: 4,096 already takes seconds.
        self.num_perm = check_int(num_perm, "minhash: num_perm", low=16, high=4096, error=VectorIndexError)
        self.seed = check_seed(seed, "minhash: seed", error=VectorIndexError)
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.tokens: dict[Hashable, set[bytes]] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    def _minhashes(self, token_sets: list[set[bytes]]) -> list[MinHash]:
        return MinHash.bulk([list(t) for t in token_sets], num_perm=self.num_perm, seed=self.seed)

    def add(self, keys: Sequence[Hashable], images: np.ndarray) -> None:
        """Add images ``[n, H, W]`` under ``keys`` (one hashable each, not already present)."""
        images = _image_batch(images)
        if not isinstance(keys, Sequence) or isinstance(keys, (str, bytes)) or not all(isinstance(key, Hashable) for key in keys):
            raise VectorIndexError(f"keys: expected a sequence of hashable keys, got {type(keys).__name__}")
        if len(keys) != len(images):
            raise VectorIndexError(f"got {len(keys)} keys for {len(images)} images")
        if len(set(keys)) != len(keys) or any(key in self.tokens for key in keys):
            raise VectorIndexError("keys must be unique and not already in the index")
        token_sets = [image_tokens(image) for image in images]
        with self.lsh.insertion_session() as session:
            for key, tokens, signature in zip(keys, token_sets, self._minhashes(token_sets)):
                session.insert(key, signature)
                self.tokens[key] = tokens

    def query(self, images: np.ndarray, verify: bool = True) -> list[list[Hashable]]:
        """For each image, the stored keys whose MinHash collides with it.

        Args:
            images: ``[n, H, W]``.
            verify: keep only candidates whose *exact* Jaccard similarity reaches the
                threshold (cheap: only the few candidates are checked), removing
                MinHash's false positives.
        """
        token_sets = [image_tokens(image) for image in _image_batch(images)]
        out = []
        for tokens, signature in zip(token_sets, self._minhashes(token_sets)):
            found = self.lsh.query(signature)
            if verify:
                found = [key for key in found if jaccard(tokens, self.tokens[key]) >= self.threshold]
            out.append(sorted(found, key=lambda key: -jaccard(tokens, self.tokens[key])))
        return out


def _image_batch(images) -> np.ndarray:
    """Images as an array ``[n, H, W]``; one image without the batch axis gets a clear message."""
    images = np.asarray(images)
    if images.ndim != 3:
        hint = " (one image? use images[None])" if images.ndim == 2 else ""
        raise VectorIndexError(f"images: expected an array [n, H, W], got shape {images.shape}{hint}")
    return images
