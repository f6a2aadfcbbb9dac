"""A recipe: one TOML file in `images/recipes/NAME.toml` saying what an image holds.

```toml
name = "hyops/node"            # the image's repository; its tag is the content hash
suite = "bookworm"             # the Debian suite, pinned
mirror = "http://deb.debian.org/debian"
variant = "minbase"            # mmdebstrap's: minbase (runnable Debian) or extract (files only)
packages = ["docker.io", "python3"]   # Debian packages, on top of the variant
hooks = []                     # shell run as root on the built tree ("$1"): mmdebstrap's
                               # --customize-hook (--extract-hook for the extract variant);
                               # recipes are code, like a Makefile
python = true                  # this checkout's packages and their dependencies, in /opt/hyops/lib

[files]                        # image path = path in the repository
"/usr/local/share/hyops/hyops-node.service" = "images/files/hyops-node.service"

[inputs.trust]                 # given at build: `hyops image build node --input trust=FILE`
path = "/etc/hyops/release/trust.toml"
required = true
help = "the release trust file: operators' and the cloud's public keys"

[config]                       # the image's configuration (docker run's defaults)
entrypoint = ["/usr/bin/tini", "--", "/usr/bin/python3", "-m", "node.container"]
cmd = []
env = { PYTHONPATH = "/opt/hyops/lib" }
workdir = "/"
volumes = ["/var/lib/hyops"]
ports = ["7300/tcp"]
```

`load_recipe` checks the whole file and reports every problem at once; nothing is built from a
recipe with a problem. Pure: reading a recipe touches no engine and no network.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wire.problems import problems_message

__all__ = ["RECIPES", "Input", "Recipe", "RecipeError", "load_recipe", "recipe_path"]

RECIPES = Path(__file__).resolve().parent / "recipes"

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,40}")
_REPO = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*")
_SUITE = re.compile(r"[a-z][a-z0-9-]{1,30}")
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_PORT = re.compile(r"\d{1,5}/(tcp|udp)")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KNOWN = {
    "name", "suite", "mirror", "variant", "packages", "hooks", "python", "files", "inputs",
    "config",
}  # fmt: skip
VARIANTS = ("minbase", "extract")  # mmdebstrap's: a runnable Debian, or the packages' files only
_CONFIG = {"entrypoint", "cmd", "env", "workdir", "volumes", "ports", "stop_signal"}


class RecipeError(Exception):
    """A recipe that cannot be built; the message names the file and each problem."""


@dataclass(frozen=True)
class Input:
    """Material given at build (`--input NAME=FILE`), placed at `path` in the image."""

    name: str
    path: str
    required: bool
    help: str


@dataclass(frozen=True)
class Recipe:
    """A checked recipe (see the module's docstring for the file format)."""

    file: Path
    key: str  # the recipe's name: images/recipes/KEY.toml
    name: str  # the image's repository
    suite: str
    mirror: str
    packages: tuple[str, ...]
    python: bool
    variant: str = "minbase"
    hooks: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, Input] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def base_key(self) -> dict[str, Any]:
        """What the Debian root filesystem depends on (its own cache entry)."""
        return {
            "suite": self.suite,
            "mirror": self.mirror,
            "packages": sorted(self.packages),
            "variant": self.variant,
            "hooks": list(self.hooks),
        }


def recipe_path(name: str, folder: Path = RECIPES) -> Path:
    """The file of recipe `name`; RecipeError naming the recipes there when there is none."""
    if not _NAME.fullmatch(name):
        raise RecipeError(f"image {name!r}: a recipe name is lower-case letters, digits, . _ -")
    path = Path(folder) / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(folder).glob("*.toml")) or ["none"]
        raise RecipeError(f"no recipe {name!r} in {folder} (recipes: {', '.join(known)})")
    return path


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def load_recipe(name: str, folder: Path = RECIPES, repo: Path | None = None) -> Recipe:
    """Read and check recipe `name` from `folder`; the `[files]` sources must exist under `repo`
    (default: the folder's repository). RecipeError lists every problem."""
    path = recipe_path(name, folder)
    repo = Path(repo) if repo is not None else Path(folder).resolve().parent.parent
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RecipeError(f"recipe {path}: cannot read it: {exc}") from None
    problems: list[str] = [
        f"{key}: unknown key (known: {', '.join(sorted(_KNOWN))})"
        for key in data
        if key not in _KNOWN
    ]
    image = data.get("name")
    if not isinstance(image, str) or not _REPO.fullmatch(image):
        problems.append(f'name: expected an image repository like "hyops/node", got {image!r}')
    suite = data.get("suite")
    if not isinstance(suite, str) or not _SUITE.fullmatch(suite):
        problems.append(f'suite: expected a Debian suite like "bookworm", got {suite!r}')
    mirror = data.get("mirror", "http://deb.debian.org/debian")
    if not isinstance(mirror, str) or not re.fullmatch(r"https?://\S+", mirror):
        problems.append(f"mirror: expected an http(s) URL of a Debian mirror, got {mirror!r}")
    packages = data.get("packages", [])
    if not _strings(packages) or not all(_PACKAGE.fullmatch(p) for p in packages):
        problems.append(f"packages: expected a list of Debian package names, got {packages!r}")
        packages = []
    variant = data.get("variant", "minbase")
    if variant not in VARIANTS:
        problems.append(f"variant: expected one of {', '.join(VARIANTS)}, got {variant!r}")
    hooks = data.get("hooks", [])
    if not _strings(hooks):
        problems.append("hooks: expected a list of shell commands (mmdebstrap customize hooks)")
        hooks = []
    python = data.get("python", False)
    if not isinstance(python, bool):
        problems.append(f"python: expected true or false, got {python!r}")
    if python and "python3" not in packages:
        problems.append('python: true needs "python3" in packages')

    files: dict[str, str] = {}
    table = data.get("files", {})
    if not isinstance(table, dict):
        problems.append("files: expected a table of image path = repository path")
        table = {}
    for dest, source in table.items():
        if not dest.startswith("/") or ".." in Path(dest).parts:
            problems.append(f"files: {dest!r}: an image path must be absolute, without ..")
        elif not isinstance(source, str) or ".." in Path(source).parts or source.startswith("/"):
            problems.append(
                f"files: {dest!r}: expected a path inside the repository, got {source!r}"
            )
        elif not (repo / source).is_file():
            problems.append(f"files: {dest!r}: no file {source} in {repo}")
        else:
            files[dest] = source

    inputs: dict[str, Input] = {}
    table = data.get("inputs", {})
    if not isinstance(table, dict):
        problems.append("inputs: expected [inputs.NAME] tables")
        table = {}
    for key, entry in table.items():
        where = f"inputs.{key}"
        if not _ENV.fullmatch(key):
            problems.append(f"{where}: a name is letters, digits and _")
        elif not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            problems.append(f"{where}: expected a table with path (the file's place in the image)")
        elif not entry["path"].startswith("/") or ".." in Path(entry["path"]).parts:
            problems.append(f"{where}: path must be absolute, without ..")
        elif set(entry) - {"path", "required", "help"}:
            problems.append(
                f"{where}: unknown keys {sorted(set(entry) - {'path', 'required', 'help'})}"
            )
        else:
            inputs[key] = Input(
                key, entry["path"], bool(entry.get("required", False)), str(entry.get("help", ""))
            )

    config = data.get("config", {})
    if not isinstance(config, dict):
        problems.append("config: expected a table")
        config = {}
    problems += [
        f"config.{key}: unknown key (known: {', '.join(sorted(_CONFIG))})"
        for key in config
        if key not in _CONFIG
    ]
    for key in ("entrypoint", "cmd", "volumes"):
        if key in config and not _strings(config[key]):
            problems.append(f"config.{key}: expected a list of strings")
    env = config.get("env", {})
    if not isinstance(env, dict) or not all(
        _ENV.fullmatch(k) and isinstance(v, str) for k, v in env.items()
    ):
        problems.append('config.env: expected a table of NAME = "value"')
    if "workdir" in config and not (
        isinstance(config["workdir"], str) and config["workdir"].startswith("/")
    ):
        problems.append("config.workdir: expected an absolute path")
    ports = config.get("ports", [])
    if not _strings(ports) or not all(_PORT.fullmatch(p) for p in ports):
        problems.append('config.ports: expected a list like ["7300/tcp"]')
    if "stop_signal" in config and not re.fullmatch(r"SIG[A-Z0-9]+", str(config["stop_signal"])):
        problems.append('config.stop_signal: expected a signal name like "SIGTERM"')

    if problems:
        raise RecipeError(problems_message(f"recipe {path}", problems))
    return Recipe(
        file=path,
        key=name,
        name=image,
        suite=suite,
        mirror=mirror,
        packages=tuple(packages),
        python=python,
        variant=variant,
        hooks=tuple(hooks),
        files=files,
        inputs=inputs,
        config=config,
    )
