PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test lint format bench clean protos

# The virtual environment is rebuilt whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/ftserve sample-data var/sample --overwrite
	cd var && ../$(BIN)/python -m zipfile -c sample.zip sample/
	# The model server, a worker and the API on this machine (Ctrl-C stops all three).
	$(BIN)/ftserve serve --port 8000 --grpc-port 8500 --rest-port 8501

test: lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check service exporter tests bench
	$(BIN)/ruff format --check service exporter tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format service exporter tests bench
	$(BIN)/ruff check --fix service exporter tests bench

bench: $(STAMP)
	$(BIN)/python -m bench.training_speed
	$(BIN)/python -m bench.export_serving
	$(BIN)/python -m bench.model_server
	$(BIN)/python -m bench.api_predict

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache

# Regenerate the Python modules of protos/ (committed; a test checks they are current).
protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. \
		$$(cd protos && find . -name '*.proto' | sed 's|^\./||' | sort)
