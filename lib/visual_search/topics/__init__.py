"""Chapter 11's senior talking points, each built small and measured on the course's data.

One module a topic: ``moderation`` (a classifier on the embedding that flags a blocked
category), ``text_search`` (a miniature CLIP: captions, a text encoder trained with the
course's InfoNCE against the frozen image encoder), ``smart_crop`` (find the salient region
and crop to it), ``metadata`` (tags as a filter and as a hybrid score), ``active_learning``
(a simulated annotator and uncertainty sampling) and ``coclick`` (smoothing embeddings over
a co-click graph, a PinSage-style idea without a GNN library).

The package sits after ``evalset`` and before ``service`` in the import order, so the
service can plug these in (a moderation rule, ``POST /search/text``).
"""
