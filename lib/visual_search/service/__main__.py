"""``python -m visual_search.service serve --host 127.0.0.1 --port 8000 --data-dir DIR --gallery full|sample``.

The first start builds the catalog, the image files and the index (with progress
bars); later starts load them and reconcile, in seconds. The index file is saved
again on a clean shutdown (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
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
    serve.add_argument("--checkpoint", type=Path, default=CHECKPOINT_PATH, help="the encoder (default: the committed SimCLR CNN)")
    serve.add_argument("--threads", type=int, default=1, help="torch threads per request (default 1: requests run in parallel instead)")
    serve.add_argument("--max-upload-mb", type=float, default=10.0, help="uploads above this get 413")
    serve.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    args = parser.parse_args(argv)

    import torch
    import uvicorn

    from visual_search.models import load_encoder
    from visual_search.service.app import create_app
    from visual_search.service.core import VisualSearchService
    from visual_search.service.gallery import load_gallery

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, args.threads))
    encoder, _ = load_encoder(args.checkpoint)
    service = VisualSearchService(args.data_dir, encoder, gallery=load_gallery(args.gallery) if _is_new(args.data_dir) else None)
    print(f"visual search: {len(service.index):,} images, model {service.model_version}, index {service.stats()['index']}; "
          f"start-up {service.startup}", flush=True)
    app = create_app(service, max_upload_bytes=int(args.max_upload_mb * 2**20))
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)
    finally:
        service.close()
    return 0


def _is_new(data_dir: Path) -> bool:
    return not (data_dir / "catalog.sqlite3").exists()


if __name__ == "__main__":
    sys.exit(main())
