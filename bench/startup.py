"""Start-up of `hyops eval '(+ 1 2)'` against plain `hy -c '(print (+ 1 2))'`.

Both run as whole processes, alternated in one run so machine noise hits both alike; the figure
is the ratio of the medians. The aim is at most 1.5x: the Session imports only what evaluating
needs (no console, no network clients) and the compiled `ops/` modules are cached in `.hyops/`.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """Seconds one run of `cmd` takes, start to exit; fails loudly on a wrong answer."""
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - start
    if out.returncode != 0 or out.stdout.strip() != "3":
        raise SystemExit(f"{cmd[0]} answered {out.stdout!r} (exit {out.returncode}): {out.stderr}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--workspace", default=str(ROOT), help="workspace to evaluate in")
    args = parser.parse_args()
    env = {**os.environ, "HYOPS_WORKSPACE": args.workspace}
    hyops = [str(BIN / "hyops"), "eval", "(+ 1 2)"]
    hy = [str(BIN / "hy"), "-c", "(print (+ 1 2))"]
    # pip byte-compiles hy in site-packages; give the project's own modules the same footing
    # (this machine may set PYTHONDONTWRITEBYTECODE, which would recompile them every run).
    for package in ("repl", "node"):
        compileall.compile_dir(ROOT / package, quiet=1)
    timed(hyops, env)  # warm the page cache and the compiled ops/ cache once
    timed(hy, env)
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(timed(hyops, env))
        theirs.append(timed(hy, env))
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"hyops eval '(+ 1 2)'      median {a * 1000:6.1f} ms  ({args.rounds} runs)")
    print(f"hy -c '(print (+ 1 2))'   median {b * 1000:6.1f} ms  ({args.rounds} runs)")
    print(f"ratio {a / b:.2f}x (aim: at most 1.50x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
