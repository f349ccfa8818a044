"""Score raw pixels and the committed checkpoint on two versions of the graded set, with the same code.

    git show 6dce799:datasets/graded_eval.npz > /tmp/graded_eval_old.npz   # the set before the rebuild
    python datasets/compare_graded_sets.py /tmp/graded_eval_old.npz datasets/graded_eval.npz

Writes ``results/graded_set_rebuild.json``: per set, graded mAP@100, nDCG@10 (and the other
metrics of ``evalset.evaluate_rankings``) plus copy@1 (the planted copy ranked first) for
raw pixels (``evalset.rank_raw_pixels``) and for ``models.load_pretrained()`` (``embed.embed``,
exact inner-product search, top 100).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from visual_search import evalset, models
from visual_search.embed import embed
from visual_search.index.exact import exact_search

ROOT = Path(__file__).resolve().parent.parent


#: The layer the rebuild was scored at: the checkpoint's retrieval layer then (it searches with "whitened" since).
LAYER = "pooled"


def score(ev: evalset.GradedEvalSet, encoder: models.Encoder) -> dict[str, dict[str, float]]:
    """``{ranker: metrics}`` for raw pixels and the checkpoint (at ``LAYER``) on ``ev``."""
    q, g = embed(encoder, ev.query_images, progress=False, layer=LAYER), embed(encoder, ev.gallery_images, progress=False, layer=LAYER)
    rankings = {"raw pixels": evalset.rank_raw_pixels(ev, 100), "SimCLR checkpoint": exact_search(q, g, 100, metric="ip")[1]}
    copy_id = np.argmax(ev.grades == evalset.GRADE_COPY, axis=1)
    return {
        name: {**evalset.evaluate_rankings(ids, ev), "copy@1": float(np.mean(ids[:, 0] == copy_id))}
        for name, ids in rankings.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path, help="the graded set before the rebuild")
    parser.add_argument("new", type=Path, help="the graded set after it")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "graded_set_rebuild.json")
    args = parser.parse_args(argv)
    encoder = models.load_pretrained()
    result = {
        "command": "python datasets/compare_graded_sets.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "old_rule": "grade-5 copy = RandomResizedCrop(28, scale 0.7-1, ratio 0.85-1.15) + horizontal flip (p 0.5) "
        "+ ColorJitter(brightness 0.3, contrast 0.3), torch seed 0: a subset of SimCLR's training augmentations",
        "new_rule": f"grade-5 copy = evalset.unseen_edits(query_images, seed=0): a random composition of {list(evalset.UNSEEN_EDITS)}, "
        "none of them a training augmentation",
        "encoder": f"models.load_pretrained() ({encoder.name}, layer {LAYER})",
        "old": score(evalset.load_graded_eval(args.old), encoder),
        "new": score(evalset.load_graded_eval(args.new), encoder),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
