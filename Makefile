# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= train,export,serve,openvino,dev
# exact versions for CI and tests; the extras themselves keep compatible ranges
CONSTRAINTS ?= constraints/ci.txt

.PHONY: demo test venv browser clean

$(BIN)/.installed-$(EXTRAS): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e '.[$(EXTRAS)]'
	touch $@

venv: $(BIN)/.installed-$(EXTRAS)

# The browser test drives Debian's Chromium (no browser download); installed here when we may.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	      || echo "note: could not install chromium; the browser test will be skipped"; \
	  else echo "note: chromium not installed; the browser test will be skipped"; fi; }

demo: venv
	$(BIN)/usedge demo

test: venv browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
