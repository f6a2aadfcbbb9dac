"""`hyops`: the one command line. Subcommands import their module only when chosen, so a one-shot
`hyops eval` does not pay for the console, the agent or the local cloud."""

from __future__ import annotations

import importlib
import sys

TYPE_CHECKING = False  # typing itself is not imported: the warm path of `hyops eval` starts here
if TYPE_CHECKING:
    import argparse

# subcommand -> "module:function"; each function takes the parsed arguments and returns an exit code
HANDLERS = {
    "repl": "repl.console:main",
    "eval": "repl.oneshot:main",
    "nrepl": "repl.nrepl:main",
    "agent": "node.agent:main",
    "up": "localcloud.commands:up_main",
    "down": "localcloud.commands:down_main",
    "image": "images.commands:image_main",
    "run": "repl.runbook:run_main",
    "notebooks": "repl.runbook:list_main",
    "ui": "repl.ui:main",
}


def build_parser() -> argparse.ArgumentParser:
    import argparse  # not at the top: the warm path of `hyops eval` never needs it

    parser = argparse.ArgumentParser(
        prog="hyops",
        description="Operate a self-organizing cloud on Docker Swarm from a Hy workspace.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("repl", help="open the Hy console in this workspace")
    p.add_argument("--cloud", help="connect to this recorded cloud instead of the default")
    p.add_argument("--vi", action="store_true", help="start in Vi editing mode (F4 toggles)")

    p = sub.add_parser("eval", help="evaluate Hy forms, print each result, exit 0 or 1")
    p.add_argument("forms", nargs="?", help="Hy source to evaluate")
    p.add_argument("-f", "--file", help="evaluate the forms in this .hy file")
    p.add_argument("--cloud", help="connect to this recorded cloud instead of the default")

    p = sub.add_parser("nrepl", help="serve this workspace to editors over nREPL (loopback)")
    p.add_argument("--port", type=int, default=0, help="TCP port (default: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    p.add_argument("--cloud", help="connect to this recorded cloud instead of the default")

    p = sub.add_parser("run", help="run a runbook (notebooks/NAME.hy) step by step, with a report")
    p.add_argument("notebook", metavar="NOTEBOOK", help="notebooks/NAME.hy, or just NAME")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set one of the runbook's parameters (repeatable); see hyops notebooks",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="every change returns its plan; nothing changes"
    )
    p.add_argument(
        "--yes", action="store_true", help="make changes without asking (needed without a terminal)"
    )
    p.add_argument("--cloud", help="run against this recorded cloud instead of the default")

    sub.add_parser("notebooks", help="list the runbooks with their summary and parameters")

    p = sub.add_parser("ui", help="open the cloud's live status page in the browser ($BROWSER)")
    p.add_argument(
        "--print-url", action="store_true", help="print the page's URL instead of opening it"
    )
    p.add_argument("--ttl", type=float, default=3600, help="session length in seconds (1 h)")
    p.add_argument("--revoke", action="store_true", help="end every page session on every node")
    p.add_argument("--cloud", help="the recorded cloud to show instead of the default")

    p = sub.add_parser("agent", help="run the node agent (configured by one TOML file)")
    p.add_argument("--config", required=True, help="the agent's TOML config file")

    p = sub.add_parser("up", help="start (or restart) a local cloud of namespaced dockerd nodes")
    p.add_argument(
        "--nodes",
        type=int,
        default=None,
        help="how many nodes (default: 3 for a new cloud; a recorded cloud comes back as it was)",
    )
    p.add_argument(
        "--name", default=None, help="the cloud's name in this workspace (default local, boxes)"
    )
    p.add_argument(
        "--containers",
        action="store_true",
        help="run the nodes as node containers (the node image) on a host engine",
    )
    p.add_argument(
        "--readdress",
        action="store_true",
        help="bring a stopped local cloud back with every node on a new address (a move)",
    )
    p.add_argument(
        "--resources",
        action="append",
        default=[],
        metavar="NODE=CPUS,MEMORY",
        help="resource figures a node labels itself with, e.g. node-2=4,8GiB (repeatable)",
    )
    p.add_argument(
        "--store",
        action="store_true",
        help="with the cloud's store (etcd, docs/store.md): a new cloud's spec gets it, every "
        "node the etcd image (built once, minutes; then cached)",
    )

    p = sub.add_parser("down", help="stop a local cloud (keeps its data unless --clean)")
    p.add_argument("--name", default=None, help="the cloud's name in this workspace (local)")
    p.add_argument("--clean", action="store_true", help="also remove the cloud's data")

    p = sub.add_parser("image", help="build an image from its recipe (images/recipes/NAME.toml)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    b = verbs.add_parser("build", help="build (or take from the cache) image NAME, as a tar")
    b.add_argument("name", metavar="NAME", help="the recipe: images/recipes/NAME.toml, e.g. node")
    b.add_argument("--output", metavar="DIR", help="also write the tar into DIR")
    b.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="material the recipe takes at build, e.g. trust=release/trust.toml (repeatable)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["eval"]:
        # the warm path first: a warm workspace process evaluates it (repl/warm.py)
        from repl.warmclient import parse_eval, run

        code = run(given[1:])
        if code is not None:
            return code
        parsed = parse_eval(given[1:])
        if parsed is not None:  # well-formed: in-process without argparse (~7 ms to import)
            import types

            return _run("eval", types.SimpleNamespace(command="eval", **parsed))
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["repl", *(argv or [])])
    return _run(args.command, args)


def _run(command: str, args: object) -> int:
    module_name, func_name = HANDLERS[command].split(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
