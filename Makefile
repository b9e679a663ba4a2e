PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The API tier's tests run in an environment built from the API image's requirements,
# without TensorFlow (tests/requirements-api.txt).
API_VENV := .venv-api
API_STAMP := $(API_VENV)/.installed
API_TESTS := tests/api tests/contract tests/ingest tests/jobs tests/test_architecture.py

# `make run`: where the stack listens and how many workers train (`make run PORT=9000
# WORKERS=2`). Everything else comes from the environment, on either side of `make`:
# `make run FTSERVE_API_TOKEN=s3cret`, `FTSERVE_DATABASE_URL=postgresql+psycopg://... make
# run`, FTSERVE_MODEL_REPO=/srv/models (README: "Run it your way").
HOST ?= 127.0.0.1
PORT ?= 8000
GRPC_PORT ?= 8500
REST_PORT ?= 8501
WORKERS ?=
# `make images`: the API and worker images, ftserve-api:$(IMAGE_TAG) and
# ftserve-worker:$(IMAGE_TAG), with BuildKit on the official bases. BASE=local first builds a
# Debian bookworm base here with debootstrap (root), for machines that cannot pull;
# IMAGENET_WEIGHTS=skip leaves the worker's Keras cache empty where the weights cannot be
# downloaded. A CA bundle pip is configured with goes in as a build secret (CA_BUNDLE=... to
# name another, CA_BUNDLE= for none). README: "Run it in containers".
BASE ?= official
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
IMAGENET_WEIGHTS ?= download
# The browser tests drive this chromium through Playwright; without it they skip.
CHROMIUM := /usr/bin/chromium

.PHONY: venv run test test-main test-api browser lint format bench clean protos images

# The virtual environment is rebuilt whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(API_STAMP): deploy/docker/api/requirements.txt tests/requirements-api.txt
	test -x $(API_VENV)/bin/python || $(PYTHON) -m venv $(API_VENV)
	$(API_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(API_VENV)/bin/python -m pip install --quiet -r tests/requirements-api.txt
	touch $(API_STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/ftserve sample-data var/sample --overwrite
	cd var && ../$(BIN)/python -m zipfile -c sample.zip sample/
	# The model server, the workers and the API on this machine (Ctrl-C stops them all).
	$(BIN)/ftserve serve --host $(HOST) --port $(PORT) --grpc-port $(GRPC_PORT) \
		--rest-port $(REST_PORT) $(if $(WORKERS),--workers $(WORKERS))

test: lint test-main test-api

# Everything that needs TensorFlow, in the main environment (the browser tests included).
test-main: $(STAMP) browser
	$(BIN)/python -m pytest $(addprefix --ignore=,$(API_TESTS))

# The API, contract, ingest and jobs tests without TensorFlow installed; model servers they
# start run on the main environment's Python.
test-api: $(STAMP) $(API_STAMP)
	FTSERVE_TEST_TF_PYTHON=$(abspath $(BIN)/python) $(API_VENV)/bin/python -m pytest $(API_TESTS)

# Installs chromium for the browser tests where it is missing and this user may (root with
# apt-get). When it cannot, the tests that need it skip, naming the reason; `make test` goes on.
browser:
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the browser tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
			|| echo "chromium could not be installed: the browser tests will skip"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check service exporter tests bench
	$(BIN)/ruff format --check service exporter tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format service exporter tests bench
	$(BIN)/ruff check --fix service exporter tests bench

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(API_VENV) var .pytest_cache .ruff_cache .mypy_cache

images:
	BASE=$(BASE) IMAGE_TAG=$(IMAGE_TAG) IMAGENET_WEIGHTS=$(IMAGENET_WEIGHTS) \
		deploy/docker/build-images.sh

# Regenerate the Python modules of protos/ (committed; a test checks they are current).
protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. \
		$$(cd protos && find . -name '*.proto' | sed 's|^\./||' | sort)
