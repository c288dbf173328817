# The two commands of the quick start: `make demo` and `make test`. Each creates the virtual
# environment on first use (Python 3.10+ and pip are all a fresh machine needs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean gpu-carry perf-analyzer

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10) and "Python 3.10+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench,gateway,torch,nnef]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/clockwork-bench demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

# The folder a lent GPU machine (no network) needs: wheels for Python 3.12 and PyCUDA's sdist.
gpu-carry: $(STAMP)
	$(PY) -m clockwork.bench.gpu_check --prepare

# Triton's perf_analyzer with the C/C++ runtime it needs, in ~/.cache/clockwork/perf-analyzer.
perf-analyzer: $(STAMP)
	$(PY) -m clockwork.bench.perf_analyzer prepare

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
