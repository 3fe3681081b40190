# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= runs/default

.PHONY: run test install clean figures

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, in its own call: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,tensorboard,ray,mo,sb3]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/policygradex run --suite cartpole --out $(OUT)

# The test modules run on TEST_WORKERS processes (pytest-xdist), one module per process at a time
# so that a module's fixtures are made once; most tests are single-threaded.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# Rewrite the README's generated blocks (quick start, `make run`) from benchmarks/results/.
figures: $(STAMP)
	$(BIN)/python benchmarks/readme_figures.py

clean:
	rm -rf $(VENV) runs
