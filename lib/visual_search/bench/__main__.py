"""``python -m visual_search.bench [NAME ...] [--fast] [--seed N]``: see ``visual_search.bench``."""

from visual_search.bench import main

main()
