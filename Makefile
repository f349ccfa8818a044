# The two commands a student needs: `make course` and `make test`.
# Both create .venv when it is missing and install the pinned stack first.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEBIAN_DATA := /usr/share/datasets/fashion-mnist

.PHONY: help install data browser course test lint bench train datasets lab lock clean serve wheelhouse

help:
	@echo "make course    install, fetch the data, run every notebook in full mode (figures/ + run-time table)"
	@echo "make test      install, run the unit tests and every notebook in fast mode"
	@echo "make lint      install, then ruff over the library, tests, datasets script, notebooks and solutions"
	@echo "make serve     the visual search service on http://127.0.0.1:8000 (full 70k gallery, image and text queries; first start builds it)"
	@echo "make bench     every benchmark (baseline, ablations, encoders, ann, serve, online, scale) -> results/*.json, figures/*.png"
	@echo "make train     retrain the committed SimCLR checkpoint (about 40 min on 2 CPU cores)"
	@echo "make lab       open JupyterLab on notebooks/"
	@echo "make data      fetch Fashion-MNIST (Debian package when root, else torchvision's download)"
	@echo "make datasets  rebuild the committed sample and graded evaluation set from the real data"
	@echo "make wheelhouse  download every pinned wheel and the data once into wheelhouse/, for a room with no network"

install: $(STAMP)

# A venv that lacks pip is a failed earlier attempt: start again. Debian's own
# python3 needs its python3-venv package for `-m venv`; install it when we can.
$(STAMP): requirements.lock pyproject.toml
	@if ! $(PY) -m pip --version >/dev/null 2>&1; then \
		rm -rf $(VENV); \
		if ! $(PYTHON) -c "import ensurepip" 2>/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "Installing Debian's python3-venv ..."; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; \
		fi; \
		$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
			echo "Could not create $(VENV) with $(PYTHON). On Debian/Ubuntu: sudo apt-get install python3-venv"; exit 1; }; \
	fi
	$(PY) -m pip install --quiet --disable-pip-version-check $(PIP_OFFLINE) -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check $(PIP_OFFLINE) --no-deps -e .
	@touch $(STAMP)

# A classroom with no network: on a machine that has one, `make wheelhouse` downloads every
# pinned wheel (and the build backend) plus the four Fashion-MNIST files into $(WHEELHOUSE)/.
# Copy the repository with that folder to each laptop: when it exists, `make install` (and so
# `make course` and `make test`) installs from it with --no-index, and `make data` copies the
# data from it, so nothing is fetched from the network.
WHEELHOUSE ?= wheelhouse
PIP_OFFLINE := $(if $(wildcard $(WHEELHOUSE)/*.whl),--no-index --find-links $(WHEELHOUSE),)
wheelhouse: $(STAMP)
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps -r requirements.lock -d $(WHEELHOUSE)
	$(PY) -m pip download --quiet --disable-pip-version-check -d $(WHEELHOUSE) "setuptools>=64" wheel
	@# A package published only as source (annoy) is built into a wheel here, where its build
	@# dependencies can still be fetched; the laptops then install it with no compiler or network.
	@# So build the wheelhouse on the laptops' OS, CPU architecture and Python version.
	@for sdist in $(WHEELHOUSE)/*.tar.gz; do [ -e "$$sdist" ] || continue; \
		$(PY) -m pip wheel --quiet --disable-pip-version-check --no-deps -w $(WHEELHOUSE) "$$sdist" && rm "$$sdist"; done
	$(MAKE) --no-print-directory data
	$(PY) -m visual_search.data --copy-to $(WHEELHOUSE)/fashion-mnist
	@echo "$(WHEELHOUSE)/: $$(ls $(WHEELHOUSE)/*.whl | wc -l) wheels, $$(du -sh $(WHEELHOUSE) | cut -f1) in all; copy it beside the repository"

# Debian's package when we can install it (root + apt-get); otherwise the
# library's own search order ends in torchvision's download.
data: $(STAMP)
	@if [ -d $(WHEELHOUSE)/fashion-mnist ] && [ -z "$$VISUAL_SEARCH_DATA" ]; then \
		mkdir -p .cache/fashion-mnist && cp -n $(WHEELHOUSE)/fashion-mnist/* .cache/fashion-mnist/; \
	fi
	@if [ ! -d $(DEBIAN_DATA) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Debian's dataset-fashion-mnist ..."; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
			|| echo "apt-get could not install dataset-fashion-mnist; falling back to torchvision's download"; \
	fi
	$(PY) -m visual_search.data

# The browser test (chapter 09's web page) drives Debian's chromium through Playwright;
# Playwright's own browser download is not used. Without a browser that one test skips.
CHROMIUM := /usr/bin/chromium
browser:
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Debian's chromium for the browser test ..."; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null) \
			|| echo "apt-get could not install chromium; the browser test will skip"; \
	fi

course: data
	$(PY) -m visual_search.notebook_runner --mode full

# Tests that need the full dataset skip (with the reason) if `data` could not get it.
# Two pytest workers (pytest-xdist), each single-threaded (tests/conftest.py), fill two cores
# without oversubscribing them; a worker that runs out of tests steals from the other (the
# notebooks are long). TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	-@$(MAKE) --no-print-directory data
	-@$(MAKE) --no-print-directory browser
	VISUAL_SEARCH_FAST=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal

SERVE_DIR ?= build/serve-full
# Chapter 11's text tower, so the page offers text search: trained once (about 30 s) against the
# committed encoder, and again when that checkpoint changes.
TEXT_ENCODER := $(SERVE_DIR)/text_encoder.pt
$(TEXT_ENCODER): checkpoints/simclr_cnn.pt | data
	$(PY) -m visual_search.topics fit-text --out $@
serve: data $(TEXT_ENCODER)
	$(PY) -m visual_search.service serve --host 127.0.0.1 --port 8000 --data-dir $(SERVE_DIR) --gallery full --text-encoder $(TEXT_ENCODER)

lint: $(STAMP)
	$(VENV)/bin/ruff check lib tests datasets notebooks solutions

bench: data
	$(PY) -m visual_search.bench

train: data
	$(PY) -m visual_search.train --epochs 50 --out checkpoints/simclr_cnn.pt --whiten 64

datasets: data
	$(PY) datasets/build_datasets.py

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

# PyPI's Linux x86_64 torch is the CUDA build, which needs the nvidia/cuda/triton
# wheels; elsewhere (macOS, ARM) torch needs none of them, so they get a marker.
lock: $(STAMP)
	@{ echo "# Exact versions of the whole stack, from 'pip freeze' of a working install (Python 3.11, x86_64)."; \
	   echo "# Ranges live in pyproject.toml; regenerate with: make lock"; \
	   $(PY) -m pip freeze --exclude-editable \
	   | sed -E '/^(nvidia-|cuda-|triton=)/ s/$$/ ; sys_platform == "linux" and platform_machine == "x86_64"/'; } > requirements.lock

clean:
	rm -rf build .pytest_cache
