# Two entry points for a fresh machine: `make demo` and `make test`.
# `setup` installs what the project needs: ffmpeg and redis-server from Debian (when missing and
# we are root), a virtualenv in .venv with the project and its test extras.

VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages demo test lint

system-packages:
	@missing=""; \
	for bin in ffmpeg ffprobe redis-server prometheus; do command -v $$bin >/dev/null || missing=1; done; \
	python3 -c 'import ensurepip, venv' 2>/dev/null || missing=1; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq ffmpeg redis-server prometheus python3-venv >/dev/null; \
	fi

$(PY):
	python3 -m venv $(VENV)

setup: system-packages $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'

demo: setup
	$(VENV)/bin/vidfarm demo

test: setup
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check .
