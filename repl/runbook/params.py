"""Runbook parameters: values from `--param key=value` text or from Hy, checked against each
parameter's declared type (its default's), with what was expected said when they do not fit.
"""

from __future__ import annotations

from typing import Any

import hy

from repl.runbook.format import Param, Runbook, RunbookError
from wire.names import did_you_mean

_TRUE = {"true", "yes", "y", "on", "1"}
_FALSE = {"false", "no", "n", "off", "0"}


def convert(param: Param, value: Any, from_text: bool) -> Any:
    """`value` as the parameter's type, or `RunbookError` saying what was expected.

    Text (from `--param key=value`) is converted; values from Hy must have the type already.
    """
    kind = param.kind
    expected = {
        "bool": "true or false",
        "int": "a whole number",
        "float": "a number",
        "str": "text",
    }[kind]

    def wrong() -> RunbookError:
        shown = value if from_text else hy.repr(value)
        return RunbookError(
            f"parameter {param.name}: {shown!s} is not {expected} "
            f"(default {hy.repr(param.default)}: {param.doc})",
            kind="wrong-type",
        )

    if from_text:
        text = str(value).strip()
        if param.default is None and text.lower() in ("", "none"):
            return None
        if kind == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise wrong()
        if kind == "int":
            try:
                return int(text)
            except ValueError:
                raise wrong() from None
        if kind == "float":
            try:
                return float(text)
            except ValueError:
                raise wrong() from None
        return str(value)
    if value is None and param.default is None:
        return None
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind == "str" and isinstance(value, str):
        return value
    raise wrong()


def resolve_params(runbook: Runbook, given: dict[str, Any], from_text: bool) -> dict[str, Any]:
    """Every parameter's value: the defaults, overridden by `given` (checked, converted)."""
    by_name = {p.name: p for p in runbook.params}
    values = {p.name: p.default for p in runbook.params}
    for key, value in given.items():
        name = key.replace("_", "-") if key not in by_name else key
        if name not in by_name:
            declared = list(by_name)
            hint = did_you_mean(key, declared, n=1) or (
                f"it takes {', '.join(declared)}" if declared else "it takes no parameters"
            )
            raise RunbookError(
                f"unknown parameter {key!r} for runbook {runbook.name}: {hint}",
                kind="unknown-param",
            )
        values[name] = convert(by_name[name], value, from_text)
    return values


def parse_param_args(items: list[str]) -> dict[str, str]:
    """`["key=value", ...]` from the command line as a dict; `RunbookError` for a bad item."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RunbookError(
                f"--param {item!r}: write --param NAME=VALUE, e.g. --param timeout=60",
                kind="unknown-param",
            )
        out[key.strip()] = value
    return out
