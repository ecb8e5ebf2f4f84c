# make run: install into .venv and run the server; make test: every check, as CI runs them.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Stamp of the last install; it is redone when the packaging metadata changes.
INSTALLED := $(VENV)/.installed
# Debian packages the tests use.
SYSTEM_PACKAGES := swaks libnet-ssleay-perl openssl curl haproxy postfix

# The summary line of `make test` must stay the last line on stdout.
MAKEFLAGS += --no-print-directory

.PHONY: install run test system-deps lint docs clean bench

# The compat editable mode puts the repository root on sys.path (through a .pth file), which
# is where Twisted's twisted.plugins looks for our twisted/plugins directory.
$(INSTALLED): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $@

$(VENV) install: $(INSTALLED)

run: $(INSTALLED)
	$(BIN)/twist smtpsvc --listen tcp:2525:interface=127.0.0.1 --deliver maildir:./maildir

system-deps:
	@missing=; \
	for package in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${db:Status-Status}' "$$package" 2>/dev/null | grep -qx installed \
			|| missing="$$missing $$package"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "make: the tests need these Debian packages:$$missing" >&2; \
		echo "make: installing them needs root and apt-get; run as root, or install them yourself:" >&2; \
		echo "  apt-get install -y --no-install-recommends $(SYSTEM_PACKAGES)" >&2; \
		exit 1; \
	fi; \
	echo "Installing$$missing"; \
	apt-get update && \
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(SYSTEM_PACKAGES)

test: $(INSTALLED) system-deps
	@$(BIN)/python tests/checks.py

# The benchmark suite against the peers (benchmarks/); it installs them itself.  Never part of
# `make test`.  BENCH_ARGS=--quick for a smoke run of a minute or two.
bench: $(INSTALLED)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# Some of the checks of `make test`, run the same way.
lint: $(INSTALLED)
	@$(BIN)/python tests/checks.py mypy "ruff check" "ruff format"

docs: $(INSTALLED)
	@$(BIN)/python tests/checks.py sphinx

clean:
	rm -rf $(VENV) docs/_build _trial_temp* .mypy_cache .ruff_cache *.egg-info build \
		twisted/plugins/dropin.cache
