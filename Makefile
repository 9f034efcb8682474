# One command surface. Needs only python3 on the machine: everything else goes in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint bench bench-reservations bench-rating clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock -e '.[embedded,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/rating-engine dev

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check rating consumers api engine commands demo tests bench
	$(BIN)/mypy
	$(BIN)/mypy bench  # the benchmarks are scripts, not a package
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/bench_pipeline.py
	$(MAKE) bench-reservations

bench-reservations: $(STAMP)
	$(BIN)/python bench/bench_reservations.py

bench-rating: $(STAMP)
	$(BIN)/python bench/bench_rating.py

clean:
	rm -rf $(VENV) .rating .pytest_cache .mypy_cache .ruff_cache
