"""Systems from repositories: read a repository's system file, list what repositories offer,
and add a system to (or take it out of) the workspace's `cloud/systems/`.

A repository offers one system in `hyops-system.toml` at its root:

    name = "whoami"                         # the system's name (default: the repository's)
    description = "Answers who it is"       # one line, for the catalogue
    recipe = "hyops-image.toml"             # optional: its image's recipe in the repository
    [system]                                # a system of the cloud spec (docs/autopilot.md)
    command = "httpd -f -p 8080"            # image = "..." instead when there is no recipe
    min_nodes = 1

The recipe is the project's image format (images/recipe.py, docs/node-image.md: Debian packages,
hooks and the repository's own `[files]`), `hyops-image.toml` at the root unless `recipe` names
another `.toml` in the repository. `install` builds it with the image tool (cached by content)
and the system runs the image by its content tag (`REPOSITORY:HASH12`).

`install` writes `[system]` to `cloud/systems/NAME.toml` with a header naming the repository and
the commit it came from, so the spec stays the source of truth and `uninstall` knows what it may
remove. Repositories are fetched with `git clone --depth 1` into a temporary folder
(`git+file://`, `git+https://`, `git+ssh://`), kept while the image is built.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from wire.lists.format import redact_url
from wire.spec import SpecError, check_spec
from wire.toml import dumps

__all__ = [
    "RECIPE_FILE",
    "SYSTEM_FILE",
    "CatalogueError",
    "checkout",
    "installed",
    "offer_in",
    "read_offer",
    "recipe_of",
    "system_file_text",
]

SYSTEM_FILE = "hyops-system.toml"
RECIPE_FILE = "hyops-image.toml"  # the image's recipe, when `recipe` names no other
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


@contextlib.contextmanager
def checkout(url: str) -> Iterator[tuple[Path, str]]:
    """The repository at `url` cloned (depth 1) into a temporary folder, and its commit; the
    folder is removed on leaving. CatalogueError when it cannot be fetched."""
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
        yield where, commit


def read_offer(url: str) -> dict[str, Any]:
    """What the repository at `url` offers (see `offer_in`). Raises CatalogueError saying
    what is wrong."""
    with checkout(url) as (where, commit):
        return offer_in(where, url, commit)


def recipe_of(where: Path, given: Any, url: str) -> tuple[Path, str, str] | None:
    """The repository's image recipe: (its folder, its name for the image tool, the image's
    repository), or None when it has none. CatalogueError for a recipe that is not the
    project's TOML format or has a problem (every problem listed)."""
    from images.recipe import RecipeError, load_recipe

    shown = redact_url(url)
    if given is None:
        if not (where / RECIPE_FILE).is_file():
            return None
        given = RECIPE_FILE
    rel = PurePosixPath(str(given))
    if not isinstance(given, str) or rel.is_absolute() or ".." in rel.parts:
        raise CatalogueError(
            f"{shown}: recipe: expected a path inside the repository, got {given!r}"
        )
    if rel.suffix != ".toml":
        raise CatalogueError(
            f"{shown}: recipe {given!r}: hyops builds images from a TOML recipe of Debian "
            f"packages (docs/node-image.md), not a Dockerfile: add {RECIPE_FILE}, or name one "
            'with recipe = "path/NAME.toml"'
        )
    if not (where / rel).is_file():
        raise CatalogueError(f"{shown}: recipe {given!r}: no such file in the repository")
    try:
        recipe = load_recipe(rel.stem, where / rel.parent, repo=where)
    except RecipeError as exc:
        raise CatalogueError(f"{shown}: {str(exc).replace(str(where) + '/', '')}") from None
    return where / rel.parent, rel.stem, recipe.name


def offer_in(where: Path, url: str, commit: str) -> dict[str, Any]:
    """What the repository checked out at `where` offers: name, description, image, recipe
    (its path, or None), the system (checked as the spec checks it), the commit read. With a
    recipe, the system's image is the recipe's (its tag is known once built: `install` sets it).
    Raises CatalogueError saying what is wrong."""
    remote = _remote(url)
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
    recipe = recipe_of(where, data.get("recipe"), url)
    name = str(data.get("name") or default).lower()
    system = data.get("system")
    unknown = sorted(set(data) - {"name", "description", "recipe", "system"})
    problems = [f"unknown key {k!r} (known: name, description, recipe, [system])" for k in unknown]
    if not isinstance(system, dict):
        problems.append("no [system] table: the system's image, command, min_nodes, ...")
        system = {}
    system = dict(system)
    if recipe is not None:
        image = system.get("image")
        if image is not None and str(image).rsplit(":", 1)[0] != recipe[2]:
            problems.append(
                f"[system] image {image!r} is not the recipe's ({recipe[2]}): leave image out, "
                "the built image's content tag is used"
            )
        system["image"] = f"{recipe[2]}:latest"  # checked as a placeholder; install sets it
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
        "image": recipe[2] if recipe is not None else checked["image"],
        "recipe": str(recipe[0].relative_to(where) / f"{recipe[1]}.toml") if recipe else None,
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
