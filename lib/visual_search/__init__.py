"""visual_search: the helper library of the visual search course.

Modules, in the one-way order data flows through them:

    config      paths and fast mode
    data        Fashion-MNIST loading, class names, the committed sample
    preprocess  load_image, crop, resize, scale, z-score
    evalset     the graded 0-5 evaluation set
    baseline    raw-pixel embeddings and exact cosine ranking
    metrics     MRR, P@k, R@k, AP, nDCG (pure functions; anything may use them)
"""

__version__ = "0.1.0"
