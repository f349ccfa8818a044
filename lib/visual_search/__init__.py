"""visual_search: the helper library of the visual search course.

Modules, in the one-way order data flows through them (a module imports only
modules above it in this list; the leaves may be used anywhere):

    errors config _checks container metrics timing viz    leaves
    data          Fashion-MNIST loading, class names, the committed sample
    preprocess    load_image, crop, resize, scale, z-score
    models        encoders (CNN, ResNet, ViT), checksummed checkpoints, Encoder.version
    embed         images -> unit embeddings (and the raw-pixel baseline)
    augment       SimCLR's batched per-image augmentations
    clicks        the click-log format and its simulator
    contrastive   data points (query, positive, n-1 negatives) and losses
    train         SimCLR, supervised and pair training
    index         nearest-neighbour indexes behind one Faiss-shaped interface
    evalset       the graded 0-5 evaluation set and its reference rankings
    bench         the benchmarks (nothing imports bench)

Every error the library raises on purpose is a ``visual_search.errors.VisualSearchError``.
"""

__version__ = "0.1.0"
