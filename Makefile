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
	# No pretrained weights on a fresh machine: train small_cnn end to end (phase 2 from layer 0).
	$(BIN)/ftserve train --data var/sample --model-name shapes --base-model small_cnn \
		--weights none --epochs 3 --fine-tune-at 0 --fine-tune-epochs 20 \
		--fine-tune-learning-rate 1e-3 --batch-size 16 --output var/runs/shapes-$$(date +%s) \
		--model-repo var/models
	# Serve the repository like TensorFlow Serving would (Ctrl-C stops it).
	$(BIN)/ftserve model-server --port=8500 --rest_api_port=8501 \
		--model_config_file=$(CURDIR)/var/models/models.config \
		--model_config_file_poll_wait_seconds=5 --enable_grpc_healthcheck_service=true

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

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache

# Regenerate the Python modules of protos/ (committed; a test checks they are current).
protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. \
		$$(cd protos && find . -name '*.proto' | sed 's|^\./||' | sort)
