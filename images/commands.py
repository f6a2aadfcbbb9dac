"""`hyops image build NAME [--output DIR] [--input NAME=FILE ...]` (repl/cli.py maps it here)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from images.build import ImageError, build_image

__all__ = ["image_main", "parse_inputs"]


def parse_inputs(items: list[str]) -> dict[str, Path]:
    """`["trust=release/trust.toml"]` -> {"trust": Path("release/trust.toml")}."""
    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ImageError(f"--input {item!r}: expected NAME=FILE, e.g. trust=release/trust.toml")
        if name.strip() in out:
            raise ImageError(f"--input {name.strip()} is given twice")
        out[name.strip()] = Path(path.strip()).expanduser()
    return out


def image_main(args: argparse.Namespace) -> int:
    """`hyops image build NAME`: prints the tag, the image ID and the tar `docker load` takes."""
    try:
        inputs = parse_inputs(args.input)
        built = build_image(
            args.name,
            inputs,
            output=Path(args.output) if args.output else None,
            log=lambda line: print(f"  {line}", flush=True),
        )
    except ImageError as exc:
        print(f"hyops image build: {exc}", file=sys.stderr)
        return 1
    how = "cached" if built.cached else f"built in {built.seconds:.1f} s"
    print(f"{built.tag} ({how})")
    print(f"  image {built.image_id}")
    print(f"  tar   {built.tar}   (docker load -i {built.tar})")
    return 0
