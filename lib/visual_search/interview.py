"""Chapter 12's mock interview: the whole design in 45 minutes, each step backed by a committed result.

A candidate walks through eight steps: clarify, frame, data, model, training, evaluation,
serving and scale. Each function below returns one :class:`Step`: what to say, and the numbers
that back it, read from the committed ``results/*.json`` (and, for the capacity plan, computed
by ``scale.plan`` from the measured bytes per vector and queries/s). Nothing is typed in: when a
benchmark is rerun, the interview and the cheat sheet change with it.

Chapter 12 shows each step with ``show_markdown(step.markdown())``; ``cheatsheet()`` joins
the same steps into the one-page ``docs/cheatsheet.md`` (written by ``python -m
visual_search.course_docs``), so the notebook and the printout cannot disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from visual_search import config
from visual_search.errors import VisualSearchError
from visual_search.scale.capacity import load_measurements, plan

#: The minutes of a 45-minute interview, by step (they add up to 45).
MINUTES = {"clarify": 4, "frame": 3, "data": 5, "model": 6, "training": 6, "evaluation": 7, "serving": 8, "scale": 6}

#: The clarifying questions a candidate should ask, with the answers the design notes imply.
CLARIFYING: list[tuple[str, str]] = [
    ("What is the input: a whole image, or a region of it?", "An image, and the user may draw a crop box on it."),
    ("What is the output?", "Gallery images ranked from most to least similar; no labels, no text."),
    ("Images only, or video and text too?", "Images only, and retrieval uses the pixels alone (no metadata)."),
    ("Is the result personalised?", "No: every user sees the same results for the same query image."),
    ("Which user actions exist?", "Clicks on results only (no saves, shares or likes), so clicks are the online signal."),
    ("How large is the gallery, and how fast must a search be?", "100-200 billion images; a search must feel instant."),
    ("Is moderation in scope?", "Not a priority here; mention where it would plug in (chapter 11)."),
    ("Can we build training data from user interactions?", "Yes: clicks can become positives once there is traffic."),
]

RUBRIC: list[str] = [
    "Clarifies scope before designing, and states the assumptions it implies.",
    "Frames the problem as ranking with embeddings, not classification, and says why.",
    "Names where training data comes from and what is wrong with each source (augmentation, clicks, labels).",
    "Writes the loss down: similarities, softmax, cross-entropy over one positive and n-1 negatives.",
    "Evaluates offline with ranking metrics on graded relevance, then online with a properly sized A/B test.",
    "Separates the online path (embed, search, re-rank) from the offline indexing pipeline.",
    "Sizes the system from measured numbers (bytes per vector, queries/s per core), not guesses.",
    "Knows the trade-offs of exact against approximate search, and of quantisation.",
    "Plans for failure: a slow or dead shard, a model swap, bad uploads.",
]

MISTAKES: list[str] = [
    "Jumping to a model before asking what the input and output are.",
    "Training a classifier and ranking by predicted label.",
    "Quoting accuracy instead of a ranking metric, or a metric without saying what is relevant.",
    "Ignoring position bias when turning clicks into training data.",
    "Exact search over 100 billion vectors, or an index whose memory was never computed.",
    "Mixing embeddings of two model versions in one index.",
    "Peeking at an A/B test, or testing per impression instead of per user.",
    "Forgetting the re-ranking step: duplicates, privacy and blocked content.",
]


class InterviewError(VisualSearchError):
    """A results file the interview needs is missing or lacks a field (named in the message)."""


@dataclass
class Step:
    """One step of the interview: its title, its minutes, what to say, and the measured numbers behind it."""

    key: str
    title: str
    minutes: int
    points: list[str]
    numbers: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def markdown(self, heading: str = "###") -> str:
        """The step as markdown: a heading, the talking points, and a table of the numbers with their source."""
        lines = [f"{heading} {self.title} ({self.minutes} min)", ""]
        lines += [f"- {p}" for p in self.points]
        if self.numbers:
            lines += ["", "| backed by | value |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in self.numbers.items()]
        if self.source:
            lines += ["", f"*Source: {self.source}.*"]
        return "\n".join(lines)


@cache
def _results(name: str) -> dict[str, Any]:
    path = config.RESULTS_DIR / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InterviewError(f"{path}: cannot read it ({err}); run python -m visual_search.bench {name.removeprefix('bench_')}") from None


def _get(name: str, *keys: str) -> Any:
    value: Any = _results(name)
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise InterviewError(f"results/{name}.json has no {'/'.join(keys)}; rerun its benchmark")
        value = value[key]
    return value


def clarify() -> Step:
    """The clarifying questions and their answers."""
    return Step("clarify", "Clarify the requirements", MINUTES["clarify"], [f"**{q}** {a}" for q, a in CLARIFYING],
                source="the design notes' requirements")


def frame() -> Step:
    """The ML framing: representation learning, then nearest-neighbour ranking."""
    return Step("frame", "Frame it as an ML task", MINUTES["frame"], [
        "Objective: retrieve images visually similar to the query, ranked by similarity.",
        "Input: an image (or its crop); output: a ranked list. Category: representation learning.",
        "An encoder maps each image to an L2-normalised embedding; similarity is the dot product (= cosine); "
        "ranking is nearest-neighbour search over the gallery's embeddings.",
    ], source="chapters 01-02")


def data() -> Step:
    """The data: images, preprocessing, and the training data point."""
    encoders = _get("bench_encoders", "click_log")
    return Step("data", "Data and preprocessing", MINUTES["data"], [
        "Decode every upload into one colour mode (EXIF, alpha, CMYK, 16-bit), crop to the user's box, resize, "
        "scale to [0, 1], z-score with frozen training statistics; the same function at training and serving.",
        "A training data point: a query, one positive and n-1 negatives, labelled with the positive's index.",
        "Positives from augmentation (free, always correct), clicks (real, noisy, biased to the top), labels (clean, costly).",
    ], {"simulated click sessions": f"{encoders['sessions']:,}",
        "clicks that land on the query's class": f"{encoders['click_precision']:.1%}"},
        source="results/bench_encoders.json (click_log); chapters 01 and 03")


def model() -> Step:
    """The encoder, and what it buys over raw pixels."""
    m = _get("bench_encoders", "metrics")
    committed, raw, ceiling = m["self-supervised CNN (committed)"], m["raw pixels"], m["supervised CNN (ceiling)"]
    return Step("model", "Model: the encoder", MINUTES["model"], [
        "A small CNN (conv blocks that halve the map and double the channels) trained self-supervised; a ViT or "
        "ResNet is the same interface. The served layer is the last conv map, whitened to 64 numbers.",
        "Compare candidates on retrieval quality and on cost per image: the whole gallery is re-embedded per model.",
    ], {"class P@1, committed encoder": f"{committed['P@1']:.3f}",
        "class P@1, raw pixels": f"{raw['P@1']:.3f}",
        "class P@1, supervised ceiling": f"{ceiling['P@1']:.3f}",
        "images/s per core, committed encoder": f"{committed['images/s']:,.0f}"},
        source="results/bench_encoders.json; chapters 02 and 04")


def training() -> Step:
    """The loss and the recipe."""
    recipe = _get("bench_encoders", "committed_model", "recipe")
    m = _get("bench_encoders", "metrics")
    return Step("training", "Training: contrastive loss", MINUTES["training"], [
        "Similarities of the query to its n candidates, divided by a temperature, through a softmax into "
        "cross-entropy with the positive's index as the label (InfoNCE; SimCLR's NT-Xent over 2N views).",
        "Fine-tune on click pairs later, weighted by inverse propensity to undo position bias.",
    ], {"recipe": f"{recipe['method']}, {recipe['epochs']} epochs, batch {recipe['batch_size']}, "
                  f"temperature {recipe['temperature']}",
        "class P@1 after click fine-tuning": f"{m['self-supervised CNN + clicks']['P@1']:.3f}",
        "class P@1 with human labels": f"{m['self-supervised CNN + labels']['P@1']:.3f}"},
        source="results/bench_encoders.json; chapters 03-04")


def evaluation() -> Step:
    """Offline metrics, then online."""
    base = _get("bench_baseline", "metrics")
    online = _get("bench_online")
    power = online["power"]["SimCLR vs random CNN"]
    return Step("evaluation", "Evaluation: offline, then online", MINUTES["evaluation"], [
        "Offline: MRR, P@k, mAP and nDCG@k on a graded 0-5 evaluation set; a random and an oracle ranking bound them.",
        "Online: CTR and clicks per query from logs; A/B tests hashed per user, sized first, checked for sample "
        "ratio, read once; interleaving to screen rankers with fewer queries.",
        "Offline gains need not move online CTR: test both.",
    ], {"graded nDCG@10: random / raw pixels / oracle":
            f"{base['random']['nDCG@10']:.3f} / {base['raw pixels']['nDCG@10']:.3f} / {base['ideal (oracle)']['nDCG@10']:.3f}",
        "A/B queries to 80% power over interleaving (SimCLR vs random CNN)": f"{power['ratio_ab_to_interleaving']:.1f}x",
        "Kendall's tau, offline nDCG@10 against online CTR": f"{online['offline_vs_online']['kendall_tau']:.2f}"},
        source="results/bench_baseline.json and results/bench_online.json; chapters 07-08")


def serving() -> Step:
    """The online path and the indexing pipeline."""
    serve = _get("bench_serve")
    timing = serve["search_load"]["server_timing_ms"]
    best = serve["index_choice"]["best_row"]
    return Step("serving", "Serving: embed, search, re-rank", MINUTES["serving"], [
        "Embedding service (decode, crop, preprocess, encode), nearest-neighbour service (over-fetch k' > k), "
        "re-ranking service (deleted, blocked, private, duplicates, top k), behind one HTTP API.",
        "The indexing pipeline embeds uploads and adds them to the index at once; a model swap builds a new index "
        "and switches the (encoder, index) pair in one step.",
    ], {"server time per search, p50 (embed / search / re-rank)":
            f"{timing['embed']['p50_ms']:.1f} / {timing['search']['p50_ms']:.2f} / {timing['rerank']['p50_ms']:.1f} ms",
        "index": f"{best['label']}, recall@10 {best['recall@10']:.3f}",
        "searches/s with 8 clients on 2 cores, errors": f"{serve['search_load']['qps']:.0f}, {serve['search_load']['errors']}",
        "hostile uploads answered with a 4xx": f"{sum(c['is_4xx'] for c in serve['hostile_uploads']['cases'])} of "
                                               f"{len(serve['hostile_uploads']['cases'])}"},
        source="results/bench_serve.json; chapter 09")


def scale(images: float = 200e9, qps: float = 20_000, index: str = "ivfpq:m=16", ram_gb: float = 256) -> Step:
    """The capacity plan at full scale, from measured bytes per vector and queries/s."""
    p = plan(images, 64, index, qps, ram_gb, measurements=load_measurements())
    return Step("scale", "Scale: 100-200 billion images", MINUTES["scale"], [
        "Shard by a hash of the id; every query visits every shard of one replica and the per-shard top k are "
        "merged exactly; replicas carry the QPS; a deadline answers without a slow shard, marked partial.",
        "Embed the gallery with a batch job (Ray Data, GPUs); keep a small fresh index for new uploads.",
    ], {"images, index, target": f"{images:,.0f}, {index} at 64-d, {qps:,.0f} QPS on {ram_gb:g} GiB machines",
        "index memory": f"{p['index_bytes'] / 1e12:.1f} TB ({p['bytes_per_vector']:.1f} B a vector)",
        "shards x replicas = machines": f"{p['shards']} x {p['replicas']} = {p['machines']:,}",
        "embedding the gallery": f"{p['embed_gpu_days']:,.0f} GPU-days (assumed GPU rate) or {p['embed_core_days']:,.0f} CPU core-days (measured)"},
        source="scale.plan over results/bench_scale.json; chapter 10")


STEPS = (clarify, frame, data, model, training, evaluation, serving, scale)


def steps() -> list[Step]:
    """Every step, in interview order."""
    return [fn() for fn in STEPS]


def cheatsheet() -> str:
    """The one-page summary: every step, the rubric and the common mistakes (``docs/cheatsheet.md``)."""
    parts = ["# Visual search system design: the cheat sheet", "",
             "A 45-minute answer, step by step, with the numbers this course measured. Generated by "
             "`python -m visual_search.course_docs` from `visual_search.interview`, the same code as chapter 12; "
             "do not edit by hand.", ""]
    for step in steps():
        parts += [step.markdown("##"), ""]
    parts += ["## What interviewers look for", ""] + [f"- {r}" for r in RUBRIC] + [""]
    parts += ["## Common mistakes", ""] + [f"- {m}" for m in MISTAKES]
    return "\n".join(parts).rstrip() + "\n"
