# Two entry points: `make demo` and `make test`. Both install everything first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := fluidsynth libfluidsynth3 ffmpeg libsndfile1 chromium fonts-dejavu-core
STAMP := $(VENV)/.installed

# General-MIDI soundfonts of Debian for the corpus and the generalisation benchmark (not needed by demo or test)
SOUNDFONT_PACKAGES := fluid-soundfont-gm fluidr3mono-gm-soundfont musescore-general-soundfont-small musescore-general-soundfont \
	csound-soundfont opl3-soundfont

.PHONY: install system soundfonts demo test lint clean

system:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "warning: missing system packages:$$missing (run 'make system' as root)"; fi; \
	fi

soundfonts:
	@if [ "$$(id -u)" = 0 ]; then export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && \
	  apt-get install -y -qq --no-install-recommends $(SOUNDFONT_PACKAGES); \
	else echo "run as root: apt-get install $(SOUNDFONT_PACKAGES)"; fi

$(STAMP): pyproject.toml
	$(MAKE) system
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/stemjepa demo --out demo_out

lint: install
	$(VENV)/bin/ruff check src tests benchmarks hubconf.py

test: install lint
	$(PY) -m pytest -q -x --timeout=900

clean:
	rm -rf $(VENV) demo_out .pytest_cache
