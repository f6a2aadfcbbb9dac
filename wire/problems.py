"""How a list of problems reads as one message: shared by every validator (config, spec, lists)."""

from __future__ import annotations


def problems_message(where: str, problems: list[str]) -> str:
    """One problem on one line; several as a count and one indented line each."""
    if len(problems) == 1:
        return f"{where}: {problems[0]}"
    lines = "\n".join(f"  {p}" for p in problems)
    return f"{where}: {len(problems)} problems:\n{lines}"
