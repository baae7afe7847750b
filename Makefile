# Set-up and everyday commands. Every target creates .venv and installs the package (with the
# tested versions pinned in constraints.txt) when it is missing or out of date.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_RUN ?= runs/demo
DEMO_MINUTES ?= 5

.PHONY: install test lint format demo bench clean docker-smoke

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[test,onnx]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

test: lint
	$(VENV)/bin/python -m pytest -q

# The demo's own folder is cleared first (defectdet itself never overwrites a run). It trains
# exactly as analyze advises (the recipe line of its report), for DEMO_MINUTES of CPU time.
demo: $(STAMP)
	rm -rf $(DEMO_RUN)
	$(VENV)/bin/defectdet analyze data_samples --time-budget $(DEMO_MINUTES) \
		--json $(DEMO_RUN)/analysis.json --plot $(DEMO_RUN)/analysis.png
	$(VENV)/bin/$$($(PY) -c "import json; print(json.load(open('$(DEMO_RUN)/analysis.json'))['recipe']['command'])") \
		--project $(DEMO_RUN) --name train
	$(VENV)/bin/defectdet predict data_samples/images --weights $(DEMO_RUN)/train/weights/best.pt \
		--out $(DEMO_RUN)/predict --workers 0
	$(VENV)/bin/defectdet evaluate data_samples --weights $(DEMO_RUN)/train/weights/best.pt \
		--plots $(DEMO_RUN)/evaluate --workers 0

bench: $(STAMP)
	$(PY) benchmarks/analyze_speed.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/predict_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

# Build the container image and run analyze/train/predict on data_samples inside it
# (CONTAINER_ENGINE=docker|podman, IMAGE, BASE_IMAGE, VARIANT, TORCH_INDEX_URL: see the script).
docker-smoke:
	bash scripts/docker_smoke.sh
