"""``python -m visual_search.topics fit-text|fit-moderation --out PATH``: train chapter 11's two service add-ons.

* ``fit-text`` trains the miniature CLIP's text tower (``text_search.fit_text_encoder``)
  against the image encoder and writes it with ``save_text_encoder``;
* ``fit-moderation`` trains the moderation classifier with a threshold chosen by the
  costs on out-of-fold scores (``moderation.fit_moderation``) and writes it with
  ``save_moderation``.

Both train on the Fashion-MNIST train split (``--data full``, the default) or on the
committed sample's gallery (``--data sample``, seconds), with the committed encoder unless
``--checkpoint`` names another. Serve them with
``python -m visual_search.service serve ... --text-encoder PATH --moderation PATH``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from visual_search.errors import VisualSearchError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visual_search.topics", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, what in (("fit-text", "the text tower for POST /search/text"), ("fit-moderation", "the moderation classifier")):
        p = sub.add_parser(name, help=f"train {what} and write it to --out")
        p.add_argument("--out", type=Path, required=True, help="the file to write")
        p.add_argument("--data", choices=("full", "sample"), default="full",
                       help="train on the 60,000 train images (default) or the committed 2,000-image sample")
        p.add_argument("--checkpoint", type=Path, default=None, help="the image encoder (default: the committed SimCLR CNN)")
        p.add_argument("--seed", type=int, default=0)
        if name == "fit-text":
            p.add_argument("--steps", type=int, default=400, help="training steps (default 400)")
        else:
            p.add_argument("--blocked-class", default="Sandal", help="the class to flag (default Sandal)")
            p.add_argument("--cost-fp", type=float, default=1.0, help="the cost of hiding a good image (default 1)")
            p.add_argument("--cost-fn", type=float, default=10.0, help="the cost of showing a disallowed one (default 10)")
    args = parser.parse_args(argv)

    from visual_search import data
    from visual_search.embed import embed
    from visual_search.models import CHECKPOINT_PATH, load_encoder
    from visual_search.topics import moderation, text_search

    try:
        encoder, _ = load_encoder(args.checkpoint or CHECKPOINT_PATH)
        if args.data == "sample":
            sample = data.load_sample()
            images, labels = sample.gallery_images, sample.gallery_labels
        else:
            images, labels = data.load_fashion_mnist("train")
        if args.command == "fit-text":
            fit = text_search.fit_text_encoder(encoder, images, labels, steps=args.steps, seed=args.seed)
            path = text_search.save_text_encoder(fit.encoder, args.out)
            print(f"text encoder: {len(fit.encoder.vocabulary)} words, loss {fit.losses[0]:.2f} -> {fit.losses[-1]:.2f} "
                  f"over {args.steps} steps on {len(images):,} images, for image model {encoder.version} -> {path}")
        else:
            model, chosen = moderation.fit_moderation(embed(encoder, images, progress=False), labels, args.blocked_class,
                                                      args.cost_fp, args.cost_fn, seed=args.seed, model_version=encoder.version)
            path = moderation.save_moderation(model, args.out)
            print(f"moderation: flags {model.blocked_class!r} at p >= {model.threshold:.3f} (out-of-fold precision "
                  f"{chosen['precision']:.3f}, recall {chosen['recall']:.3f} on {len(images):,} images), for image model "
                  f"{encoder.version} -> {path}")
    except VisualSearchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
