# Two entry points for a fresh machine: `make demo` and `make test`.
# `setup` installs what the project needs: ffmpeg, redis-server, and for the browser playback test
# chromium and node/npm, from Debian (when missing); a virtualenv in .venv with the project and its
# test extras (runtime dependencies at the versions in constraints.txt, the image's); the test's
# players and browser driver from npm (tests/browser/node_modules); the web console's libraries from
# npm (web/node_modules), copied into the package (`console`).

VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages console demo test lint image image-check

# command:Debian package. Only what is missing is installed: a node from elsewhere (NodeSource) ships
# its own npm, and Debian's npm package would conflict with it.
SYSTEM_COMMANDS := ffmpeg:ffmpeg ffprobe:ffmpeg redis-server:redis-server prometheus:prometheus \
	chromium:chromium node:nodejs npm:npm
BROWSER_DEPS := tests/browser/node_modules/.package-lock.json

system-packages:
	@missing=""; \
	for pair in $(SYSTEM_COMMANDS); do \
	  command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; \
	done; \
	python3 -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

$(PY):
	python3 -m venv $(VENV)

# hls.js, dash.js and playwright-core at the versions in package-lock.json; again when it changes.
$(BROWSER_DEPS): tests/browser/package-lock.json | system-packages
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The web console (uploader/console, served at /) uses tus-js-client and hls.js from npm, at the
# versions in web/package-lock.json; their minified dist files and licenses are copied into
# uploader/console/vendor/ (gitignored), which the Python package ships and the API serves.
CONSOLE_DEPS := web/node_modules/.package-lock.json
CONSOLE_VENDOR := uploader/console/vendor

$(CONSOLE_DEPS): web/package-lock.json | system-packages
	cd web && npm ci --no-audit --no-fund --loglevel=error
	touch $@

console: $(CONSOLE_DEPS)
	web/copy-vendor.sh $(CURDIR)/$(CONSOLE_VENDOR)

setup: system-packages $(PY) $(BROWSER_DEPS) console
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'

demo: setup
	$(VENV)/bin/vidfarm demo

test: setup
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check .

# The container image (Dockerfile): `docker build` where a Docker daemon answers, else buildah, with
# the base images bootstrapped from Debian packages when no registry can be reached (see the script).
# Not part of `test` or CI: it downloads a few hundred MiB and takes minutes.
IMAGE ?= localhost/vidfarm:check

image:
	IMAGE=$(IMAGE) deploy/image-check.sh build

# Builds, then checks inside the image: `vidfarm --help`, h264_nvenc in ffmpeg, and a 1080p+720p
# transcode as uid 10001 with a read-only root and /tmp as tmpfs.
image-check:
	IMAGE=$(IMAGE) deploy/image-check.sh all
