"""``python -m visual_search.service serve --host 127.0.0.1 --port 8000 --data-dir DIR --gallery full|sample``.

Optional add-ons from chapter 11: ``--text-encoder PATH`` serves ``POST /search/text``, and
``--moderation PATH`` blocks flagged uploads and drops flagged results (both files are
written by ``python -m visual_search.topics``).

The first start builds the catalog, the image files and the index (with progress
bars); later starts load them and reconcile, in seconds. The index file is saved
again on a clean shutdown (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from visual_search.models import CHECKPOINT_PATH


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visual_search.service", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the HTTP service")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--data-dir", type=Path, required=True, help="catalog, image files and index live here")
    serve.add_argument("--gallery", choices=("full", "sample"), default="full",
                       help="images for a new data dir: all 70,000 Fashion-MNIST images, or the committed 2,000-image sample")
    serve.add_argument("--checkpoint", type=Path, default=None,
                       help="the encoder (default: the one the data dir last swapped to, else the committed SimCLR CNN)")
    serve.add_argument("--threads", type=int, default=1, help="torch threads per request (default 1: requests run in parallel instead)")
    serve.add_argument("--request-threads", type=int, default=os.cpu_count() or 1,
                       help="requests handled at once (default: the core count). Requests are CPU-bound Python, so more "
                            "threads only take turns on the GIL: 8 clients on 2 cores got the same QPS and a shorter p99 with 2 than with 8 or AnyIO's 40 "
                            "(python -m visual_search.bench serve, thread_pools)")
    serve.add_argument("--max-upload-mb", type=float, default=10.0, help="uploads above this get 413")
    serve.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    serve.add_argument("--text-encoder", type=Path, default=None,
                       help="a text tower for POST /search/text (python -m visual_search.topics fit-text --out PATH)")
    serve.add_argument("--moderation", type=Path, default=None,
                       help="a moderation model: flagged uploads are stored blocked and flagged results dropped "
                            "(python -m visual_search.topics fit-moderation --out PATH)")
    args = parser.parse_args(argv)

    import torch
    import uvicorn

    from visual_search.models import load_encoder
    from visual_search.service.app import create_app
    from visual_search.service.core import VisualSearchService
    from visual_search.service.gallery import load_gallery

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One thread each for torch, Faiss's OpenMP and BLAS: requests run side by side instead, and idle
    # OpenMP threads spin-wait, stealing the core that another request (or a client) needs.
    import faiss
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(max(1, args.threads))
    faiss.omp_set_num_threads(max(1, args.threads))
    threadpool_limits(max(1, args.threads))
    from visual_search.errors import VisualSearchError
    from visual_search.topics.moderation import load_moderation
    from visual_search.topics.text_search import load_text_encoder

    encoder, _ = load_encoder(args.checkpoint or _last_checkpoint(args.data_dir) or CHECKPOINT_PATH)
    try:  # a bad add-on file (or one trained for another model) ends the start with one line naming it
        text_encoder = None if args.text_encoder is None else load_text_encoder(args.text_encoder)
        moderation = None if args.moderation is None else load_moderation(args.moderation)
        service = VisualSearchService(args.data_dir, encoder, gallery=lambda: load_gallery(args.gallery),  # loaded only for an empty catalog
                                      text_encoder=text_encoder, moderation=moderation)
    except VisualSearchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"visual search: {len(service.index):,} images, model {service.model_version}, index {service.stats()['index']}; "
          f"start-up {service.startup}", flush=True)
    app = create_app(service, max_upload_bytes=int(args.max_upload_mb * 2**20), request_threads=args.request_threads, close_on_shutdown=True)
    # The app's lifespan closes the service (saving the index) on Ctrl-C or SIGTERM, before uvicorn
    # re-raises the signal to end the process.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)
    return 0


def _last_checkpoint(data_dir: Path) -> Path | None:
    """The checkpoint the data dir last swapped to (``POST /admin/model``), if it is still there.

    Without this, a restart would go back to the default model and re-embed the whole gallery with it.
    """
    if not (data_dir / "catalog.sqlite3").exists():
        return None
    from visual_search.service.catalog import Catalog

    catalog = Catalog(data_dir / "catalog.sqlite3")
    try:
        source = catalog.get_meta("checkpoint")
    finally:
        catalog.close()
    return Path(source) if source and Path(source).is_file() else None


if __name__ == "__main__":
    sys.exit(main())
