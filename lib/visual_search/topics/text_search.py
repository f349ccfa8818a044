"""Search images by a text query: a miniature CLIP, trained against the frozen image encoder.

CLIP trains an image tower and a text tower so that an image and its caption land close
together. Here the image tower is the course's committed encoder, **frozen**: its gallery
vectors, its index and its service stay exactly as they are, and only a small text tower is
trained to map words into the same 64-d space. A text query then is one more query vector,
served by the same index and the same re-ranking rules as an image query.

Fashion-MNIST has no captions, so they are built from what is known about each image:

* its class name ("sandal", "ankle boot") or its super-category ("footwear", ``data.SUPER_CATEGORIES``);
* three attributes **measured from the pixels** (``measure_attributes``), each turned into a
  word by the image's tercile *within its own class* (``fit_attribute_rules``), so that
  "dark shirt" means darker than most shirts, not "a shirt, which is darker than a coat":

  - brightness, the mean grey level of the item's pixels (those above ``INK_LEVEL``):
    bottom third "dark", top third "light";
  - size, the fraction of the 28 x 28 frame the item covers: "small" / "large". Fashion-MNIST
    scales every item to fit the frame, so this is the item's shape (a wide coat, a strappy
    sandal), not its real size;
  - texture, the mean absolute change in grey level from one row to the next, inside the item:
    "plain" / "patterned". It rises for horizontal stripes, and also for prints, logos and
    checks, so the honest word is "patterned", not "striped". The raw change is used, not one
    divided by the brightness: within a class the raw one is nearly uncorrelated with the
    brightness (|r| <= 0.3 on the sample), the ratio is not (r about -0.65).

  The middle third gets no word. The frozen embedding can see all three: a ridge probe on it
  predicts each within-class attribute on held-out images with a correlation of about 0.8.

A caption joins a random subset of the image's attribute words and its noun, e.g. "a dark
ankle boot", "light patterned tops", "footwear". The tokenizer lower-cases, splits into words,
drops a few stop words ("a", "the", "show", "me", ...) and maps a plural it does not know to
its singular ("sandals" -> "sandal"); other unknown words are dropped, and a query with no
known word is refused. The text tower is a bag of words: ``EmbeddingBag`` (mean of the word
vectors) -> ``Linear`` -> L2-normalise, 64-d like the image embedding. It is trained with the
course's InfoNCE, ``contrastive.softmax_cross_entropy``: each caption's positive is its own
image and the other images of the batch are its negatives (CLIP's text-to-image direction).

The measurement (``evaluate_text_search``) embeds held-out images, captions them with the rules
fitted on the training images, and asks: do a caption's 10 nearest images share its class
(text-to-image P@10), and do they carry the attributes it asked for? It compares the trained
tower with the same tower untrained (its random initial weights), which shows what the training
bought, and with chance.

A bag of words has no word order and no vocabulary beyond the captions: "not dark" means dark,
and "sneaker without laces" is "sneaker". That is the gap between this and CLIP, whose
transformer text tower was trained on 400 million real captions.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from visual_search import config, data
from visual_search._checks import check_int, check_real, check_seed
from visual_search.contrastive import softmax_cross_entropy
from visual_search.embed import embed
from visual_search.errors import TopicsError
from visual_search.models import Encoder, load_pretrained

#: A pixel above this grey level (of 255) belongs to the item; Fashion-MNIST's background is 0.
INK_LEVEL = 25
#: Each measured attribute and its two words: (bottom tercile within the class, top tercile).
ATTRIBUTES: dict[str, tuple[str, str]] = {
    "brightness": ("dark", "light"),
    "size": ("small", "large"),
    "texture": ("plain", "patterned"),
}
#: Words the tokenizer drops before the vocabulary sees them: they say nothing about the image.
STOP_WORDS: frozenset[str] = frozenset({"a", "an", "the", "of", "with", "and", "in", "on", "some", "any", "show", "me", "find",
                                        "photo", "picture", "image", "images", "please", "i", "want", "looking", "for"})
#: The longest query accepted, in characters.
MAX_QUERY_CHARS = 200
#: The class nouns as captions spell them ("t-shirt/top" gives the words "tshirt" and "top").
CLASS_NOUNS: tuple[str, ...] = tuple(name.lower() for name in data.CLASS_NAMES)
#: The super-category noun of each class label.
SUPER_NOUNS: tuple[str, ...] = tuple(data.SUPER_CATEGORY_NAMES[s] for s in data.SUPER_CATEGORY_OF_LABEL)

_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


# ---- attributes measured from the pixels ------------------------------------------------------


def _check_images(images: object, name: str = "images") -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 3 or not len(images):
        got = f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
        raise TopicsError(f"{name}: expected uint8 images [N >= 1, H, W], got {got}")
    return images


def _check_labels(labels: object, n: int, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels) if isinstance(labels, (np.ndarray, list, tuple)) else None
    if arr is None or arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
        got = f"{arr.dtype} {list(arr.shape)}" if arr is not None else type(labels).__name__
        raise TopicsError(f"{name}: expected {n} integer class labels, got {got}")
    if n and (arr.min() < 0 or arr.max() >= len(data.CLASS_NAMES)):
        raise TopicsError(f"{name}: class labels must be in 0..{len(data.CLASS_NAMES) - 1}, got {arr.min()}..{arr.max()}")
    return arr.astype(np.int64)


def measure_attributes(images: np.ndarray) -> dict[str, np.ndarray]:
    """The three attributes of each image, measured from its pixels (see the module docstring).

    Args:
        images: uint8 ``[N, H, W]``, a light item on a black background (Fashion-MNIST's form).

    Returns:
        ``{"brightness", "size", "texture"}`` -> float64 ``[N]``: the mean grey level of the item's
        pixels (0..255), the fraction of the frame it covers (0..1), and the mean absolute
        row-to-row change in grey level between vertically adjacent item pixels (0..255).
        An image with no pixel above ``INK_LEVEL`` gets 0 for all three.

    Raises:
        TopicsError: not uint8 ``[N >= 1, H >= 2, W]``.
    """
    images = _check_images(images)
    if images.shape[1] < 2:
        raise TopicsError(f"images: need at least 2 rows to measure texture, got shape {list(images.shape)}")
    x = images.astype(np.float64)
    item = x > INK_LEVEL
    count = item.sum(axis=(1, 2))
    brightness = (x * item).sum(axis=(1, 2)) / np.maximum(count, 1)
    pairs = item[:, 1:, :] & item[:, :-1, :]  # both pixels of the vertical pair belong to the item
    texture = (np.abs(np.diff(x, axis=1)) * pairs).sum(axis=(1, 2)) / np.maximum(pairs.sum(axis=(1, 2)), 1)
    return {"brightness": brightness, "size": item.mean(axis=(1, 2)), "texture": texture}


@dataclass(frozen=True)
class AttributeRules:
    """Per-class tercile cut points of each attribute, fitted on training images.

    Attributes:
        cuts: attribute name -> float64 ``[n_classes, 2]``: the 1/3 and 2/3 quantiles of that
            attribute among the class's training images. Below the first: the attribute's
            first word ("dark"); above the second: its second word ("light"); between: no word.
    """

    cuts: dict[str, np.ndarray]

    def words(self, images: np.ndarray, labels: np.ndarray) -> list[tuple[str, ...]]:
        """The attribute words of each image, judged against its own class's cut points.

        Returns:
            One tuple per image, in ``ATTRIBUTES`` order, 0 to 3 words (e.g. ``("dark", "patterned")``).

        Raises:
            TopicsError: bad images or labels (see ``measure_attributes``).
        """
        values = measure_attributes(images)
        labels = _check_labels(labels, len(images))
        out: list[list[str]] = [[] for _ in labels]
        for name, (low_word, high_word) in ATTRIBUTES.items():
            low, high = self.cuts[name][labels, 0], self.cuts[name][labels, 1]
            for i in np.flatnonzero(values[name] < low):
                out[i].append(low_word)
            for i in np.flatnonzero(values[name] > high):
                out[i].append(high_word)
        order = {w: j for j, pair in enumerate(ATTRIBUTES.values()) for w in pair}
        return [tuple(sorted(ws, key=order.__getitem__)) for ws in out]


def fit_attribute_rules(images: np.ndarray, labels: np.ndarray) -> AttributeRules:
    """Fit the per-class tercile cut points of each attribute on training images.

    Args:
        images: uint8 ``[N, H, W]``.
        labels: int ``[N]`` class labels; every class must have at least 3 images.

    Raises:
        TopicsError: bad images or labels, or a class with fewer than 3 images.
    """
    values = measure_attributes(images)
    labels = _check_labels(labels, len(images))
    counts = np.bincount(labels, minlength=len(data.CLASS_NAMES))
    if counts.min() < 3:
        raise TopicsError(f"labels: every class needs at least 3 images to cut in thirds, got counts {counts.tolist()}")
    cuts = {name: np.stack([np.quantile(v[labels == c], [1 / 3, 2 / 3]) for c in range(len(data.CLASS_NAMES))])
            for name, v in values.items()}
    return AttributeRules(cuts)


# ---- captions -------------------------------------------------------------------------------


def _check_words(words: object, n: int) -> list[tuple[str, ...]]:
    if isinstance(words, str) or not isinstance(words, Sequence) or len(words) != n:
        got = len(words) if isinstance(words, Sequence) and not isinstance(words, str) else type(words).__name__
        raise TopicsError(f"words: expected one tuple of attribute words per label ({n}), got {got}")
    return list(words)


def caption(label: int, words: Sequence[str] = (), noun: str = "class") -> str:
    """One caption: "a" + the attribute words + the class name (``noun="class"``) or super-category ("super").

    >>> caption(9, ("dark",))
    'a dark ankle boot'
    >>> caption(9, ("dark",), noun="super")
    'dark footwear'
    """
    label = check_int(label, "label", low=0, high=len(data.CLASS_NAMES) - 1, error=TopicsError)
    if noun not in ("class", "super"):
        raise TopicsError(f"noun must be 'class' or 'super', got {noun!r}")
    known = {w for pair in ATTRIBUTES.values() for w in pair}
    if isinstance(words, str) or any(w not in known for w in words):
        raise TopicsError(f"words: expected attribute words from {sorted(known)}, got {words!r}")
    if noun == "class":
        return " ".join(["an" if (list(words) or [CLASS_NOUNS[label]])[0][0] in "aeiou" else "a", *words, CLASS_NOUNS[label]])
    return " ".join([*words, SUPER_NOUNS[label]])


def sample_captions(labels: np.ndarray, words: Sequence[tuple[str, ...]], rng: np.random.Generator, p_super: float = 0.3) -> list[str]:
    """One random caption per image: a random subset of its attribute words, in random order, and a noun.

    The noun is the super-category with probability ``p_super``, else the class name. Varying the
    subset teaches the text tower each word on its own, so a query may name any of them.
    """
    labels = _check_labels(labels, len(labels) if isinstance(labels, (np.ndarray, list, tuple)) else -1)
    words = _check_words(words, len(labels))
    if not isinstance(rng, np.random.Generator):
        raise TopicsError(f"rng: expected a numpy Generator, got {type(rng).__name__}")
    p_super = check_real(p_super, "p_super", low=0, high=1, error=TopicsError)
    out = []
    for label, ws in zip(labels, words):
        keep = [w for w in ws if rng.random() < 0.5]
        rng.shuffle(keep)
        out.append(caption(int(label), keep, "super" if rng.random() < p_super else "class"))
    return out


def all_captions(labels: np.ndarray, words: Sequence[tuple[str, ...]]) -> list[str]:
    """Every image's fullest captions: all its attribute words with its class name, and with its super-category.

    What the vocabulary is built from: every word a sampled caption can contain appears here.
    """
    labels = _check_labels(labels, len(labels) if isinstance(labels, (np.ndarray, list, tuple)) else -1)
    words = _check_words(words, len(labels))
    return [c for label, ws in zip(labels, words) for c in (caption(int(label), ws), caption(int(label), ws, "super"))]


# ---- the tokenizer ----------------------------------------------------------------------------


def split_words(text: str) -> list[str]:
    """Lower-case ``text`` and split it into words; hyphens and apostrophes inside a word are removed ("T-shirt" -> "tshirt")."""
    if not isinstance(text, str):
        raise TopicsError(f"query: expected a string, got {type(text).__name__}")
    return [w.replace("-", "").replace("'", "") for w in _WORD.findall(text.lower())]


class Tokenizer:
    """Words to vocabulary ids: lower-case, split, drop stop words, map unknown plurals to known singulars.

    Args:
        vocabulary: the known words (built from training captions with ``from_captions``).
    """

    def __init__(self, vocabulary: Sequence[str]) -> None:
        if isinstance(vocabulary, str) or not isinstance(vocabulary, Sequence) or not vocabulary:
            raise TopicsError(f"vocabulary: expected a non-empty list of words, got {vocabulary!r}")
        if any(not isinstance(w, str) or split_words(w) != [w] or w in STOP_WORDS for w in vocabulary) or len(set(vocabulary)) != len(vocabulary):
            raise TopicsError("vocabulary: expected distinct lower-case words, none a stop word")
        self.vocabulary: tuple[str, ...] = tuple(vocabulary)
        self.index = {w: i for i, w in enumerate(self.vocabulary)}

    @classmethod
    def from_captions(cls, captions: Sequence[str]) -> Tokenizer:
        """The vocabulary of ``captions``: every word in them but the stop words, in sorted order."""
        if isinstance(captions, str) or not isinstance(captions, Sequence) or not captions:
            raise TopicsError("captions: expected a non-empty list of caption strings")
        return cls(sorted({w for c in captions for w in split_words(c) if w not in STOP_WORDS}))

    def __len__(self) -> int:
        return len(self.vocabulary)

    def _lookup(self, word: str) -> int | None:
        if word in self.index:
            return self.index[word]
        for suffix in ("es", "s"):  # "dresses" -> "dress", "sandals" -> "sandal"
            if word.endswith(suffix) and word[: -len(suffix)] in self.index:
                return self.index[word[: -len(suffix)]]
        return None

    def tokenize(self, text: str) -> tuple[list[int], list[str]]:
        """``(ids of the known words, the unknown words)`` of ``text``, stop words dropped; never raises on content."""
        ids, unknown = [], []
        for w in split_words(text):
            if w in STOP_WORDS:
                continue
            i = self._lookup(w)
            if i is None:
                unknown.append(w)
            else:
                ids.append(i)
        return ids, unknown

    def encode(self, text: str) -> list[int]:
        """The ids of a query's known words.

        Raises:
            TopicsError: not a string, empty, longer than ``MAX_QUERY_CHARS``, or no known word
                (the message lists the unknown words and some known ones).
        """
        if not isinstance(text, str):
            raise TopicsError(f"query: expected a string, got {type(text).__name__}")
        if not text.strip():
            raise TopicsError("query: empty; describe the item, e.g. 'a dark ankle boot'")
        if len(text) > MAX_QUERY_CHARS:
            raise TopicsError(f"query: {len(text)} characters, the limit is {MAX_QUERY_CHARS}")
        ids, unknown = self.tokenize(text)
        if not ids:
            raise TopicsError(f"query {text!r}: no known word (unknown: {unknown}); known words include {list(self.vocabulary[:12])}")
        return ids


# ---- the text tower ---------------------------------------------------------------------------


class TextEncoder(nn.Module):
    """A bag of words to a unit vector: ``EmbeddingBag`` (mean) -> ``Linear`` -> L2-normalise.

    Args:
        vocabulary: the known words (see ``Tokenizer``).
        dim: the output size; must equal the image embedding's (64 for the committed encoder).
        width: the size of each word vector.
        seed: seeds the initial weights.
        image_model_version: the version of the image encoder it was trained against
            (``Encoder.version``): its vectors mean nothing next to another model's.
    """

    def __init__(self, vocabulary: Sequence[str], dim: int = 64, width: int = 64, seed: int = 0,
                 image_model_version: str | None = None) -> None:
        super().__init__()
        self.tokenizer = Tokenizer(vocabulary)
        self.dim = check_int(dim, "dim", low=1, error=TopicsError)
        self.width = check_int(width, "width", low=1, error=TopicsError)
        seed = check_seed(seed, error=TopicsError)
        if image_model_version is not None and not isinstance(image_model_version, str):
            raise TopicsError(f"image_model_version: expected a string or None, got {image_model_version!r}")
        self.image_model_version = image_model_version
        generator = torch.Generator().manual_seed(seed)
        self.words = nn.EmbeddingBag(len(self.tokenizer), self.width, mode="mean")
        self.project = nn.Linear(self.width, self.dim)
        with torch.no_grad():  # seeded initial weights, independent of torch's global generator
            self.words.weight.normal_(0.0, 1.0, generator=generator)
            bound = 1.0 / self.width**0.5
            self.project.weight.uniform_(-bound, bound, generator=generator)
            self.project.bias.uniform_(-bound, bound, generator=generator)

    @property
    def vocabulary(self) -> tuple[str, ...]:
        return self.tokenizer.vocabulary

    def forward(self, token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Unit vectors ``[B, dim]`` for B non-empty lists of word ids (differentiable)."""
        flat = torch.tensor([i for ids in token_ids for i in ids], dtype=torch.int64)
        offsets = torch.tensor(np.cumsum([0] + [len(ids) for ids in token_ids[:-1]]), dtype=torch.int64)
        return F.normalize(self.project(self.words(flat, offsets)), dim=1)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Float32 unit vectors ``[len(texts), dim]`` for query strings.

        Raises:
            TopicsError: a list that is empty or not of strings, or a query the tokenizer refuses.
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
            raise TopicsError(f"texts: expected a non-empty list of query strings, got {texts!r}")
        was = self.training
        self.eval()
        try:
            return self([self.tokenizer.encode(t) for t in texts]).numpy().astype(np.float32)
        finally:
            self.train(was)

    def state(self) -> dict:
        """What ``save_text_encoder`` writes: the vocabulary, the sizes, the image model's version and the weights."""
        return {"format": "visual_search.text_encoder/1", "vocabulary": list(self.vocabulary), "dim": self.dim, "width": self.width,
                "image_model_version": self.image_model_version, "weights": {k: v.detach().clone() for k, v in self.state_dict().items()}}


def save_text_encoder(encoder: TextEncoder, path: str | Path) -> Path:
    """Write ``encoder.state()`` to ``path`` (torch's format, readable with ``weights_only=True``). Returns the path."""
    if not isinstance(encoder, TextEncoder):
        raise TopicsError(f"encoder: expected a TextEncoder, got {type(encoder).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(encoder.state(), path)
    return path


def load_text_encoder(path: str | Path) -> TextEncoder:
    """Read a text encoder written by ``save_text_encoder``.

    Raises:
        TopicsError: a missing or unreadable file, or one that is not a text encoder's state.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TopicsError(f"{path}: no such text encoder file") from None
    except Exception as err:  # torch raises pickle, zip and runtime errors for a damaged file
        raise TopicsError(f"{path}: not a readable text encoder ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != "visual_search.text_encoder/1":
        raise TopicsError(f"{path}: not a text encoder file (no format 'visual_search.text_encoder/1')")
    try:
        encoder = TextEncoder(state["vocabulary"], state["dim"], state["width"], image_model_version=state["image_model_version"])
        encoder.load_state_dict(state["weights"])
    except (KeyError, RuntimeError, TypeError) as err:
        raise TopicsError(f"{path}: a damaged text encoder state ({type(err).__name__}: {err})") from None
    return encoder.eval()


# ---- training --------------------------------------------------------------------------------


@dataclass
class TextSearchFit:
    """What ``fit_text_encoder`` returns.

    Attributes:
        encoder: the trained text tower (in eval mode).
        rules: the attribute cut points fitted on the training images (caption held-out images with them).
        losses: the InfoNCE loss of every step, each before that step's update: ``losses[0]`` is the
            untrained tower's, log(batch size) or more (a uniform guess scores log(batch size) exactly).
    """

    encoder: TextEncoder
    rules: AttributeRules
    losses: list[float]


def train_text_encoder(
    image_vectors: np.ndarray,
    labels: np.ndarray,
    words: Sequence[tuple[str, ...]],
    *,
    steps: int = 400,
    batch_size: int = 256,
    temperature: float = 0.1,
    lr: float = 0.02,
    width: int = 64,
    seed: int = 0,
    image_model_version: str | None = None,
) -> tuple[TextEncoder, list[float]]:
    """Train a text tower against frozen image vectors with InfoNCE and in-batch negatives.

    Each step draws ``batch_size`` images, one random caption each (``sample_captions``), and
    applies ``contrastive.softmax_cross_entropy`` with caption b as the query and the batch's
    images as its candidates, image b the positive. Same-class images in the batch are false
    negatives; they share the caption's class word, so the loss settles the word near the
    class's images as a whole, and the attribute words move it within the class.

    Args:
        image_vectors: float32 ``[N, D]`` unit vectors from the frozen image encoder.
        labels: int ``[N]`` class labels. words: each image's attribute words (``AttributeRules.words``).
        steps, batch_size, lr: Adam steps, images a step (>= 2, at most N), learning rate.
        temperature: divides the cosine similarities (CLIP learns it; 0.1 is fixed here).
        width: the word-vector size. seed: the initial weights and every draw.
        image_model_version: recorded in the encoder (``Encoder.version`` of the image tower).

    Returns:
        ``(encoder in eval mode, the loss of every step)``.

    Raises:
        TopicsError: bad vectors, labels, words or parameters.
    """
    if not isinstance(image_vectors, np.ndarray) or image_vectors.ndim != 2 or image_vectors.dtype != np.float32 or not np.isfinite(image_vectors).all():
        got = f"{image_vectors.dtype} {list(image_vectors.shape)}" if isinstance(image_vectors, np.ndarray) else type(image_vectors).__name__
        raise TopicsError(f"image_vectors: expected finite float32 [N, D], got {got}")
    n = len(image_vectors)
    labels = _check_labels(labels, n)
    words = _check_words(words, n)
    steps = check_int(steps, "steps", low=1, error=TopicsError)
    batch_size = check_int(batch_size, "batch_size", low=2, high=max(2, n), error=TopicsError)
    if n < 2:
        raise TopicsError(f"image_vectors: need at least 2 images for in-batch negatives, got {n}")
    temperature = check_real(temperature, "temperature", low=0, low_open=True, error=TopicsError)
    lr = check_real(lr, "lr", low=0, low_open=True, error=TopicsError)
    seed = check_seed(seed, error=TopicsError)
    tokenizer = Tokenizer.from_captions(all_captions(labels, words))
    model = TextEncoder(tokenizer.vocabulary, image_vectors.shape[1], width, seed, image_model_version)
    model.train()
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(image_vectors)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    targets = torch.arange(batch_size)
    losses = []
    for _ in range(steps):
        idx = rng.choice(n, batch_size, replace=False)
        texts = sample_captions(labels[idx], [words[i] for i in idx], rng)
        query = model([model.tokenizer.encode(t) for t in texts])
        candidates = images[torch.from_numpy(idx)].unsqueeze(0).expand(batch_size, -1, -1)  # every caption against the whole batch
        loss = softmax_cross_entropy(query, candidates, targets, kind="cosine", temperature=temperature)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return model.eval(), losses


def fit_text_encoder(image_encoder: Encoder, images: np.ndarray, labels: np.ndarray, *, steps: int = 400, batch_size: int = 256,
                     temperature: float = 0.1, lr: float = 0.02, seed: int = 0) -> TextSearchFit:
    """Everything from training images to a text tower: attribute rules, captions, frozen image vectors, training.

    Args:
        image_encoder: the frozen image tower (e.g. ``models.load_pretrained()``); its version is recorded.
        images: uint8 ``[N, 28, 28]`` training images. labels: their int class labels.
        steps, batch_size, temperature, lr, seed: see ``train_text_encoder``.

    Raises:
        TopicsError: bad images, labels or parameters.
    """
    if not isinstance(image_encoder, Encoder):
        raise TopicsError(f"image_encoder: expected a visual_search.models.Encoder, got {type(image_encoder).__name__}")
    rules = fit_attribute_rules(images, labels)
    batch_size = check_int(batch_size, "batch_size", low=2, high=len(images), error=TopicsError)
    words = rules.words(images, labels)
    vectors = embed(image_encoder, images, progress=False)
    encoder, losses = train_text_encoder(vectors, labels, words, steps=steps, batch_size=batch_size, temperature=temperature, lr=lr,
                                         seed=seed, image_model_version=image_encoder.version)
    return TextSearchFit(encoder, rules, losses)


# ---- the measurement ---------------------------------------------------------------------------


def _top_k(text_vectors: np.ndarray, image_vectors: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """The indices of each text's k most similar images, best first (exact, in chunks of texts)."""
    out = []
    for start in range(0, len(text_vectors), chunk):
        scores = text_vectors[start : start + chunk] @ image_vectors.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.tile(np.arange(scores.shape[1]), (len(scores), 1))
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        out.append(np.take_along_axis(part, order, axis=1))
    return np.concatenate(out)


def text_to_image_scores(encoder: TextEncoder, queries: Sequence[str], query_labels: np.ndarray, query_words: Sequence[tuple[str, ...]],
                         image_vectors: np.ndarray, image_labels: np.ndarray, image_words: Sequence[tuple[str, ...]], k: int = 10,
                         relevant: str = "class") -> dict[str, float]:
    """Text-to-image retrieval quality of ``encoder`` over a gallery of image vectors.

    Args:
        queries: caption strings. query_labels: the class each caption names.
        query_words: the attribute words each caption names.
        image_vectors: float32 unit vectors ``[M, D]`` of the gallery. image_labels, image_words: theirs.
        k: the depth (1..M).
        relevant: "class" (relevant = same class) or "super" (same super-category).

    Returns:
        ``p_at_k``: mean fraction of the top k that are relevant; ``attribute_agreement``: over the
        queries that name attributes, the mean fraction of (top-k image, named word) pairs where the
        image carries the word, counted only on relevant images (NaN if no query names one).
    """
    image_labels = _check_labels(image_labels, len(image_vectors), "image_labels")
    query_labels = _check_labels(query_labels, len(queries), "query_labels")
    k = check_int(k, "k", low=1, high=len(image_vectors), error=TopicsError)
    if relevant not in ("class", "super"):
        raise TopicsError(f"relevant must be 'class' or 'super', got {relevant!r}")
    top = _top_k(encoder.encode(list(queries)), image_vectors, k)
    group = data.SUPER_CATEGORY_OF_LABEL if relevant == "super" else np.arange(len(data.CLASS_NAMES))
    hits = group[image_labels[top]] == group[query_labels][:, None]
    agree = []
    for row, ws, ok in zip(top, query_words, hits):
        if ws and ok.any():
            agree.append(np.mean([w in image_words[j] for j in row[ok] for w in ws]))
    return {"p_at_k": float(hits.mean()), "attribute_agreement": float(np.mean(agree)) if agree else float("nan")}


def evaluate_text_search(image_encoder: Encoder | None = None, fast: bool | None = None, steps: int | None = None, seed: int = 0,
                         k: int = 10) -> dict[str, float]:
    """Train the text tower and measure text-to-image retrieval on held-out images and their captions.

    Fast mode trains on the committed sample's 2,000 gallery images and tests on its 500 query
    images (seconds); full mode trains on the 60,000 training images and tests on the 10,000 test
    images (about a minute, mostly embedding). The held-out images are captioned with the rules
    fitted on the training images: each gets one caption with all its attribute words and its class
    name (``captioned_*``) and one with its super-category (``super_*``); the ten bare class names
    are queries too (``class_name_*``). Each is compared with the same tower untrained (``untrained_*``).

    Args:
        image_encoder: the frozen image tower (default: the committed one).
        fast: the fast data (default: ``config.is_fast()``).
        steps: training steps (default 400; 150 in fast mode).
        seed: the training seed. k: the depth of P@k.

    Returns:
        A flat dict: ``train_images``, ``test_images``, ``vocabulary``, ``initial_loss``, ``final_loss``
        (mean of the last 20 steps), ``chance_p_at_k`` (each class's share of the test images), and for
        the trained and the untrained tower ``{captioned,super,class_name}_p_at_k``,
        ``captioned_attribute_agreement`` and its ``attribute_base_rate`` (the share of relevant test
        images carrying a named word, what a tower blind to attributes would score), plus
        ``sandal_p_at_k`` and ``seconds_train``.

    Raises:
        TopicsError: a bad k, steps, seed or image encoder.
    """
    fast = config.is_fast() if fast is None else bool(fast)
    image_encoder = load_pretrained() if image_encoder is None else image_encoder
    steps = (150 if fast else 400) if steps is None else steps
    if fast:
        sample = data.load_sample()
        train_x, train_y, test_x, test_y = sample.gallery_images, sample.gallery_labels, sample.query_images, sample.query_labels
    else:
        (train_x, train_y), (test_x, test_y) = data.load_fashion_mnist("train"), data.load_fashion_mnist("test")
    k = check_int(k, "k", low=1, high=len(test_x), error=TopicsError)  # before the training, not after it
    t0 = time.perf_counter()
    fit = fit_text_encoder(image_encoder, train_x, train_y, steps=steps, seed=seed)
    seconds = time.perf_counter() - t0
    test_vectors = embed(image_encoder, test_x, progress=False)
    test_words = fit.rules.words(test_x, test_y)
    untrained = TextEncoder(fit.encoder.vocabulary, fit.encoder.dim, fit.encoder.width, seed)
    names = [caption(c) for c in range(len(data.CLASS_NAMES))]
    out: dict[str, float] = {"train_images": len(train_x), "test_images": len(test_x), "vocabulary": len(fit.encoder.vocabulary),
                             "steps": steps, "initial_loss": fit.losses[0], "final_loss": float(np.mean(fit.losses[-20:])),
                             "seconds_train": round(seconds, 2),
                             "chance_p_at_k": float((np.bincount(test_y) / len(test_y))[test_y].mean())}
    vocab = [w for pair in ATTRIBUTES.values() for w in pair]
    carries = np.array([[w in ws for w in vocab] for ws in test_words])  # [M, 6]
    rate = np.stack([carries[test_y == c].mean(axis=0) for c in range(len(data.CLASS_NAMES))])  # share of class c carrying word w
    out["attribute_base_rate"] = float(np.mean([np.mean([rate[y, vocab.index(w)] for w in ws]) for y, ws in zip(test_y, test_words) if ws]))
    for prefix, model in (("", fit.encoder), ("untrained_", untrained)):
        full = text_to_image_scores(model, [caption(int(y), ws) for y, ws in zip(test_y, test_words)], test_y, test_words,
                                    test_vectors, test_y, test_words, k)
        sup = text_to_image_scores(model, [caption(int(y), ws, "super") for y, ws in zip(test_y, test_words)], test_y, test_words,
                                   test_vectors, test_y, test_words, k, relevant="super")
        bare = text_to_image_scores(model, names, np.arange(len(names)), [()] * len(names), test_vectors, test_y, test_words, k)
        sandal = text_to_image_scores(model, ["sandal"], np.array([5]), [()], test_vectors, test_y, test_words, k)
        out.update({f"{prefix}captioned_p_at_k": full["p_at_k"], f"{prefix}captioned_attribute_agreement": full["attribute_agreement"],
                    f"{prefix}super_p_at_k": sup["p_at_k"], f"{prefix}class_name_p_at_k": bare["p_at_k"],
                    f"{prefix}sandal_p_at_k": sandal["p_at_k"]})
    return out


__all__ = [
    "ATTRIBUTES",
    "CLASS_NOUNS",
    "INK_LEVEL",
    "MAX_QUERY_CHARS",
    "STOP_WORDS",
    "SUPER_NOUNS",
    "AttributeRules",
    "TextEncoder",
    "TextSearchFit",
    "Tokenizer",
    "all_captions",
    "caption",
    "evaluate_text_search",
    "fit_attribute_rules",
    "fit_text_encoder",
    "load_text_encoder",
    "measure_attributes",
    "sample_captions",
    "save_text_encoder",
    "split_words",
    "text_to_image_scores",
    "train_text_encoder",
]
