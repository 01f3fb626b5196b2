DATA_DIR ?= /var/lib/hutch
HOST ?= 127.0.0.1
PORT ?= 8787

.PHONY: setup serve test bench

setup:
	scripts/setup.sh

serve: setup
	.venv/bin/hutch serve --data-dir $(DATA_DIR) --host $(HOST) --port $(PORT)

test:
	scripts/test.sh

bench: setup
	.venv/bin/python -m bench
