# tr_vault: `make run` starts the server with its embedded defaults; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test soak check install dev clean bench browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed

dev: $(VENV)/.installed-dev

run: install
	$(BIN)/tr-vault serve

test: dev browser
	$(BIN)/pytest

# The web page's browser tests drive Debian's Chromium (Playwright cannot download its own
# here). Installed where it is missing, we are root and apt-get is there (CI, the dev machines);
# elsewhere the tests skip and say why. A failed install fails the target.
# (the path tests/browser.py launches)
CHROMIUM := /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "make browser: installing Debian's chromium (for the web page's browser tests)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "make browser: $(CHROMIUM) is missing and cannot be installed here (needs root and apt-get): the browser tests will skip"; \
	fi

# Long profiles of the tests marked `soak` (the short ones run in `make test`); docs/reliability.md.
# The faulthandler dump at 120 s (pyproject) would fire in every long run: it is moved out of the way.
SOAK_ROUNDS ?= 50
soak: dev
	TR_VAULT_SOAK_ROUNDS=$(SOAK_ROUNDS) TR_VAULT_FUZZ_PROFILE=soak \
		$(BIN)/pytest -m soak -s -o faulthandler_timeout=1800

check: dev
	$(BIN)/ruff check tr_vault tests bench
	$(BIN)/ruff format --check tr_vault tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

bench: dev
	$(BIN)/python bench/intake.py --mode all --rounds 3
	$(BIN)/python bench/prune_pass.py --rows 100000
