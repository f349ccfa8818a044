"""Rebuild the committed sample and graded evaluation set from the real Fashion-MNIST.

    python datasets/build_datasets.py            # writes both files next to this script
    python datasets/build_datasets.py --out DIR  # writes them elsewhere (the tests do this)

The same seed and the pinned torch/torchvision give identical arrays, which
``tests/test_evalset.py::test_committed_files_rebuild_identically`` checks against
the committed files whenever the full data is installed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from visual_search.data import Sample, build_sample
from visual_search.evalset import build_graded_eval, save_graded_eval

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: datasets/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gallery-per-class", type=int, default=200)
    parser.add_argument("--queries-per-class", type=int, default=50)
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    sample = build_sample(args.gallery_per_class, args.queries_per_class, seed=args.seed)
    sample_path = args.out / "fashion_mnist_sample.npz"
    np.savez_compressed(sample_path, **{name: getattr(sample, name) for name in Sample.__dataclass_fields__})
    evalset = build_graded_eval(sample, seed=args.seed)
    eval_path = args.out / "graded_eval.npz"
    save_graded_eval(evalset, eval_path)
    for path in (sample_path, eval_path):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    print(f"sample: {len(sample.gallery_images)} gallery + {len(sample.query_images)} queries; "
          f"graded set: {len(evalset)} queries x {len(evalset.gallery_images)} candidates, "
          f"grade counts {dict(zip(*np.unique(evalset.grades, return_counts=True)))}")


if __name__ == "__main__":
    main()
