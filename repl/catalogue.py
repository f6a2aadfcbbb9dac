"""Systems from repositories: read a repository's system file, list what repositories offer,
and add a system to (or take it out of) the workspace's `cloud/systems/`.

A repository offers one system in `hyops-system.toml` at its root:

    name = "whoami"                         # the system's name (default: the repository's)
    description = "Answers who it is"       # one line, for the catalogue
    recipe = "Dockerfile"                   # optional: how its image is built (not built yet)
    [system]                                # a system of the cloud spec (docs/autopilot.md)
    image = "local/busybox:1"
    command = "httpd -f -p 8080"
    min_nodes = 1

`install` writes `[system]` to `cloud/systems/NAME.toml` with a header naming the repository and
the commit it came from, so the spec stays the source of truth and `uninstall` knows what it may
remove. Repositories are fetched with `git clone --depth 1` into a temporary folder
(`git+file://`, `git+https://`, `git+ssh://`).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from wire.lists.format import redact_url
from wire.spec import SpecError, check_spec
from wire.toml import dumps

__all__ = ["SYSTEM_FILE", "CatalogueError", "installed", "read_offer", "system_file_text"]

SYSTEM_FILE = "hyops-system.toml"
COMPOSE_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
HEADER = "# installed from "
GIT_TIMEOUT = 60


class CatalogueError(ValueError):
    """A repository cannot be read as a system, or a system cannot be (un)installed."""


def _remote(url: str) -> str:
    if not url.startswith("git+"):
        raise CatalogueError(
            f"{redact_url(url)}: a repository URL starts with git+ "
            "(git+https://host/repo.git, git+file:///path/repo.git)"
        )
    remote = url[len("git+") :]
    if not re.match(r"^(file|https|ssh)://", remote):
        raise CatalogueError(f"{redact_url(url)}: use git+file://, git+https:// or git+ssh://")
    return remote


def read_offer(url: str) -> dict[str, Any]:
    """What the repository at `url` offers: name, description, image, recipe, the system
    (checked as the spec checks it), the commit read. Raises CatalogueError saying what is wrong."""
    remote = _remote(url)
    with tempfile.TemporaryDirectory(prefix="hyops-catalogue-") as tmp:
        where = Path(tmp) / "repo"
        result = subprocess.run(
            ["git", "clone", "--quiet", "--depth", "1", remote, str(where)],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise CatalogueError(
                f"{redact_url(url)}: cannot be fetched ({redact_url(result.stderr.strip())[-300:]})"
            )
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=GIT_TIMEOUT,
        ).stdout.strip()
        path = where / SYSTEM_FILE
        default = remote.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git").lower()
        composes = [where / n for n in COMPOSE_FILES if (where / n).is_file()]
        if path.is_file():
            try:
                data = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise CatalogueError(
                    f"{redact_url(url)}: {SYSTEM_FILE} is not valid TOML ({exc})"
                ) from None
        elif composes:
            data = _from_compose(url, composes[0], default)
        else:
            raise CatalogueError(
                f"{redact_url(url)}: no {SYSTEM_FILE} (nor a compose file with one service) at "
                "its root: a repository offers a system there (docs/services.md)"
            )
        recipe = data.get("recipe")
        has_recipe = bool(recipe) and (where / str(recipe)).is_file()
    name = str(data.get("name") or default).lower()
    system = data.get("system")
    unknown = sorted(set(data) - {"name", "description", "recipe", "system"})
    problems = [f"unknown key {k!r} (known: name, description, recipe, [system])" for k in unknown]
    if not isinstance(system, dict):
        problems.append("no [system] table: the system's image, command, min_nodes, ...")
        system = {}
    try:
        checked = check_spec({"systems": {name: system}})["systems"][name]
    except SpecError as exc:
        problems += exc.problems
        checked = {}
    if problems:
        raise CatalogueError(f"{redact_url(url)}: {SYSTEM_FILE}: " + "; ".join(problems))
    return {
        "name": name,
        "description": str(data.get("description") or ""),
        "image": checked["image"],
        "recipe": str(recipe) if has_recipe else None,
        "url": redact_url(url),
        "commit": commit,
        "system": system,
    }


def _from_compose(url: str, path: Path, default: str) -> dict[str, Any]:
    """A compose file with one service (no configs, secrets or networks of its own) read as a
    system offer; `x-hyops: {name, description, recipe, min_nodes, below}` adds what Compose
    has no key for."""
    import yaml

    from repl.compose import ComposeError, load_stack

    try:
        extra = (yaml.safe_load(path.read_text()) or {}).get("x-hyops") or {}
        stack = load_stack(path, default, env={})
    except (ComposeError, yaml.YAMLError, AttributeError) as exc:
        raise CatalogueError(f"{redact_url(url)}: {path.name}: {exc}") from None
    services = list(stack["services"].values())
    if len(services) != 1 or stack["configs"] or stack["secrets"]:
        raise CatalogueError(
            f"{redact_url(url)}: {path.name} has {len(services)} services, "
            f"{len(stack['configs'])} configs, {len(stack['secrets'])} secrets: a system is one "
            "service without configs or secrets (deploy larger files with deploy-stack!)"
        )
    system = {k: v for k, v in services[0].items() if k not in ("networks", "labels") and v}
    for key in ("min_nodes", "below"):
        if key in extra:
            system[key] = extra[key]
    return {
        "name": extra.get("name") or default,
        "description": extra.get("description", ""),
        "recipe": extra.get("recipe"),
        "system": system,
    }


def system_file_text(offer: dict[str, Any]) -> str:
    """The `cloud/systems/NAME.toml` an offer becomes, with the header `uninstall` looks for."""
    lines = [HEADER[2:] + f"{offer['url']} at {offer['commit']}"]
    if offer["description"]:
        lines.append(offer["description"])
    return dumps(offer["system"], comment="\n".join(lines))


def installed(path: Path) -> str | None:
    """The repository a system file was installed from, or None (written by hand)."""
    try:
        first = path.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return first[len(HEADER) :].rsplit(" at ", 1)[0] if first.startswith(HEADER) else None
