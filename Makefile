# The two commands of the quick start: `make repl` and `make test`. Both set up what is missing.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: setup repl test lint format bench up down

setup:
	@scripts/setup.sh

repl: setup
	@$(VENV)/hyops up
	@$(VENV)/hyops repl

test: setup lint
	@$(VENV)/pytest -q

lint: setup
	@$(VENV)/ruff check .
	@$(VENV)/ruff format --check .
	@$(VENV)/lint-imports --no-cache --no-logo

format: setup
	@$(VENV)/ruff format .
	@$(VENV)/ruff check --fix .

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(VENV)/python $$b || exit 1; done

up: setup
	@$(VENV)/hyops up

down: setup
	@$(VENV)/hyops down
