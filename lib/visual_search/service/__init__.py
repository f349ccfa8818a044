"""The serving system of chapter 09: three small services and an indexing pipeline behind one HTTP API.

    catalog     SQLite: image metadata, the query log, the click log (the source of truth)
    blobs       the content-addressed folder of image files
    embedding   EmbeddingService: bytes -> load_image -> crop -> unit embedding, with a model version
    neighbours  NeighbourService over any visual_search.index, with over-fetching; IndexSpec, DEFAULT_SPEC
    rerank      the rule chain: deleted, blocked, private, query duplicates, near-duplicates, top k
    core        VisualSearchService: search, upload, delete, flags, clicks, model swap, reconcile
    gallery     the full 70k gallery or the committed 2k sample
    app         the FastAPI app (create_app) and the upload size limit
    __main__    python -m visual_search.service serve --host 127.0.0.1 --port 8000 --data-dir DIR --gallery full|sample

In a notebook or a test, the system runs in-process:

    from visual_search.models import load_pretrained
    from visual_search.service import VisualSearchService, load_gallery
    service = VisualSearchService("build/serve-sample", load_pretrained(), gallery=load_gallery("sample"))
    response = service.search(png_bytes, box=(4, 4, 24, 24), k=10)
"""

from visual_search.errors import NotFoundError, PayloadTooLargeError, ServiceError
from visual_search.service.catalog import Catalog, ImageRecord, content_hash
from visual_search.service.core import Gallery, SearchResponse, VisualSearchService
from visual_search.service.embedding import EmbeddingService, parse_box
from visual_search.service.gallery import load_gallery
from visual_search.service.neighbours import DEFAULT_SPEC, EXACT_SPEC, IndexSpec, NeighbourService, overfetch
from visual_search.service.rerank import Candidate, QueryContext, default_rules  # the module `rerank` stays the attribute

__all__ = [
    "DEFAULT_SPEC", "EXACT_SPEC", "Candidate", "Catalog", "EmbeddingService", "Gallery", "ImageRecord", "IndexSpec",
    "NeighbourService", "NotFoundError", "PayloadTooLargeError", "QueryContext", "SearchResponse", "ServiceError",
    "VisualSearchService", "content_hash", "default_rules", "load_gallery", "overfetch", "parse_box",
]
