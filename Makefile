# The two commands of the quick start: `make repl` and `make test`. Both set up what is missing:
# `make repl` only what the console and the local cloud need, `make test` the test tools too.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: setup setup-tests repl test lint format bench up down

setup:
	@scripts/setup.sh

setup-tests:
	@scripts/setup.sh --tests

repl: setup
	@$(VENV)/hyops up
	@$(VENV)/hyops repl

test: setup-tests lint
	@$(VENV)/pytest -q

lint: setup-tests
	@$(VENV)/ruff check .
	@$(VENV)/ruff format --check .
	@$(VENV)/lint-imports --no-cache --no-logo

format: setup-tests
	@$(VENV)/ruff format .
	@$(VENV)/ruff check --fix .

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(VENV)/python $$b || exit 1; done

up: setup
	@$(VENV)/hyops up

down: setup
	@$(VENV)/hyops down
