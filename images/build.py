"""Build an image from its recipe: a Debian root filesystem (mmdebstrap, minbase), this checkout's
Python packages with their dependencies, files of the repository and the inputs given at build,
written as one layer in a tar that `docker load` takes.

Reproducible: the suite is pinned, every timestamp is SOURCE_DATE_EPOCH, members are in a fixed
order and owned by root, Python dependencies are pinned to the versions installed in this
workspace. Cached outside the repository (`$HYOPS_IMAGE_CACHE`, default /var/cache/hyops/images),
keyed by a hash of everything the image is made from, so a fresh clone on the same machine reuses
an earlier build; the Debian root filesystem has its own cache entry (suite, mirror, packages),
so a change of the agent's code rebuilds in seconds. The image's tag is that hash (12 hex).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from images.recipe import RECIPES, Recipe, RecipeError, load_recipe

__all__ = [
    "CACHE",
    "EPOCH",
    "Built",
    "ImageError",
    "build_image",
    "cache_dir",
    "cached_image",
    "content_key",
    "image_tag",
    "python_pins",
]

EPOCH = 1_700_000_000  # SOURCE_DATE_EPOCH of every image: a fixed date, so builds repeat
CACHE = Path("/var/cache/hyops/images")
BUILDER = "3"  # bump when the way images are written changes, so old cache entries are not used
REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("wire", "node", "repl", "ops", "localcloud", "images")  # this checkout's code
LIB = "/opt/hyops/lib"  # where the Python packages go in the image (PYTHONPATH)
MAX_INPUT = 1 << 20
KEEP = 4  # cache entries kept per recipe
_SKIP = re.compile(r"(^|/)(__pycache__|\.)")


class ImageError(Exception):
    """An image cannot be built; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Built:
    """A built (or cached) image: its tag, image ID and the tar `docker load` takes."""

    recipe: str
    tag: str  # repository:hash12
    image_id: str  # sha256:… of the image config (the same for the same inputs)
    tar: Path
    cached: bool
    seconds: float


def cache_dir() -> Path:
    """The image cache: $HYOPS_IMAGE_CACHE, or /var/cache/hyops/images."""
    return Path(os.environ.get("HYOPS_IMAGE_CACHE") or CACHE)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder of a cache entry at a time, across processes (others wait, then reuse it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- what an image is made from ---------------------------------------------------------------


def python_pins(project: str = "hyops") -> list[str]:
    """`name==version` of every distribution `project` needs at run time (extras left out), as
    installed in this Python: the image gets exactly these versions."""
    from packaging.requirements import Requirement

    pins: dict[str, str] = {}
    todo = [project]
    while todo:
        name = todo.pop()
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise ImageError(
                f"{name} is not installed in {sys.prefix}: run `make setup` first"
            ) from None
        key = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        if key in pins:
            continue
        if name != project:
            pins[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return sorted(f"{k}=={v}" for k, v in pins.items())


def _source_files(repo: Path) -> list[tuple[str, bytes]]:
    """This checkout's packages (what its wheel holds), as (path, content) in a fixed order."""
    files = []
    for package in PACKAGES:
        for path in sorted((repo / package).rglob("*")):
            rel = path.relative_to(repo).as_posix()
            if path.is_file() and not _SKIP.search(rel) and path.suffix in (".py", ".hy", ".toml"):
                files.append((rel, path.read_bytes()))
    return files


def _read_inputs(recipe: Recipe, given: dict[str, Path]) -> dict[str, bytes]:
    """The inputs' contents, checked: all required ones given, no unknown ones, none a private
    key (an image may be carried anywhere: it holds public material only)."""
    problems = []
    for name in sorted(set(given) - set(recipe.inputs)):
        known = ", ".join(recipe.inputs) or "none"
        problems.append(
            f"--input {name}: recipe {recipe.key} takes no such input (inputs: {known})"
        )
    for name, spec in recipe.inputs.items():
        if spec.required and name not in given:
            problems.append(f"--input {name}=FILE is needed: {spec.help or spec.path}")
    out: dict[str, bytes] = {}
    for name, path in given.items():
        if name not in recipe.inputs:
            continue
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            problems.append(f"--input {name}={path}: cannot read it: {exc.strerror}")
            continue
        if len(data) > MAX_INPUT:
            problems.append(f"--input {name}={path}: more than 1 MiB; inputs are keys and lists")
        elif b"PRIVATE KEY" in data:
            problems.append(
                f"--input {name}={path}: holds a private key; an image carries public material "
                "only (give the public key, or mount private keys when the container runs)"
            )
        else:
            out[name] = data
    if problems:
        raise ImageError("\n".join(problems))
    return out


def content_key(
    recipe: Recipe,
    inputs: dict[str, bytes],
    pins: list[str],
    sources: list[tuple[str, bytes]],
    repo: Path = REPO,
) -> str:
    """The hash (hex) of everything the image is made from: its cache key and tag. `repo`
    holds the recipe's `[files]` (this checkout, or a system's repository)."""
    h = hashlib.sha256()

    def part(label: str, data: bytes) -> None:
        h.update(f"{label}\0{len(data)}\0".encode())
        h.update(data)

    part("builder", BUILDER.encode())
    part("recipe", recipe.file.read_bytes())
    for dest, source in sorted(recipe.files.items()):
        part(f"file {dest}", (repo / source).read_bytes())
    for name, data in sorted(inputs.items()):
        part(f"input {name}", data)
    if recipe.python:
        part("pins", "\n".join(pins).encode())
        for rel, data in sources:
            part(f"source {rel}", data)
    return h.hexdigest()


# --- the Debian root filesystem ---------------------------------------------------------------


def _run(cmd: list[str], what: str, timeout: float, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
        raise ImageError(f"{what} failed (exit {result.returncode}):\n{tail}")


def _base_rootfs(recipe: Recipe, cache: Path, log: Callable[[str], None]) -> Path:
    """The Debian root filesystem of the recipe's suite and packages, made by mmdebstrap once and
    cached by (suite, mirror, packages)."""
    what = {**recipe.base_key(), "builder": BUILDER}
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
    tar = cache / f"debian-{recipe.suite}-{key[:16]}.tar"
    with _locked(cache / f".debian-{key[:16]}.lock"):
        if tar.is_file():
            os.utime(tar)  # used now: the pruning keeps the root filesystems used last
            return tar
        if not shutil.which("mmdebstrap"):
            raise ImageError(
                "no mmdebstrap on this machine: run `make setup`, or `apt-get install mmdebstrap`"
            )
        log(f"debian {recipe.suite}: {' '.join(recipe.packages)} (mmdebstrap, once)")
        tmp = tar.with_name(f".{tar.stem}.{os.getpid()}.tar")
        cmd = [
            "mmdebstrap",
            f"--variant={recipe.variant}",
            "--mode=root",
            "--quiet",
            "--format=tar",
            f"--include={','.join(sorted(recipe.packages))}",
            '--aptopt=Acquire::Retries "3"',
            # no documentation, manual pages or translations in an image; licences stay
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            # after everything is installed; the extract variant installs nothing, so there the
            # hooks run once the packages are unpacked
            *(
                f"--{'extract' if recipe.variant == 'extract' else 'customize'}-hook={hook}"
                for hook in recipe.hooks
            ),
            recipe.suite,
            str(tmp),
            recipe.mirror,
        ]
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)}
        try:
            _run(cmd, f"mmdebstrap {recipe.suite} from {recipe.mirror}", 1800, env)
            os.replace(tmp, tar)
        finally:
            if tmp.is_file():
                tmp.unlink()
    # root filesystems of old recipes or builders: beyond the KEEP used last, and unused for a
    # day (another build may be about to read one it just found)
    for old in sorted(cache.glob("debian-*.tar"), key=lambda p: p.stat().st_mtime)[:-KEEP]:
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > 86400:
                old.unlink()
    return tar


# --- the layer -------------------------------------------------------------------------------


def _python_tree(pins: list[str], sources: list[tuple[str, bytes]], stage: Path) -> dict[str, Any]:
    """Files under /opt/hyops/lib: the pinned dependencies (pip, wheels preferred) and this
    checkout's packages. Returns image path -> (bytes | Path, mode)."""
    lib = stage / "lib"
    cmd = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-warn-script-location", "--no-deps", "--no-compile", "--prefer-binary",
        "--target", str(lib), *pins,
    ]  # fmt: skip
    _run(cmd, "pip install (the image's Python dependencies)", 900)
    files: dict[str, Any] = {}
    for path in sorted(lib.rglob("*")):
        rel = path.relative_to(lib).as_posix()
        if rel.split("/")[0] == "bin" or "__pycache__" in rel:
            continue  # console scripts name this machine's Python; the image has its own
        if path.is_file() and not path.is_symlink():
            files[f"{LIB}/{rel}"] = (path, 0o755 if os.access(path, os.X_OK) else 0o644)
            if rel.endswith(".dist-info/RECORD"):
                # without the console scripts left out above: their lines hash a shebang naming
                # the building Python's path (another checkout: another image)
                lines = path.read_bytes().splitlines(keepends=True)
                kept = b"".join(x for x in lines if not x.startswith(b"../../bin/"))
                files[f"{LIB}/{rel}"] = (kept, 0o644)
    for rel, data in sources:
        files[f"{LIB}/{rel}"] = (data, 0o644)
    script = (
        "#!/usr/bin/python3\n# hyops, from the packages in /opt/hyops/lib\nimport sys\n"
        f"sys.path.insert(0, {LIB!r})\nfrom repl.cli import main\nsys.exit(main())\n"
    )
    files["/usr/local/bin/hyops"] = (script.encode(), 0o755)
    return files


def _info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _write_layer(base: Path, extra: dict[str, Any], out: Path) -> str:
    """The image's one layer: the Debian root filesystem with `extra` (image path -> (bytes or
    Path, mode)) added over it, members in a fixed order. Returns its sha256 (hex)."""
    wanted = {"./" + p.lstrip("/"): v for p, v in extra.items()}
    dirs = set()
    for path in wanted:
        parent = Path(path).parent
        while str(parent) not in (".", "/"):
            dirs.add("./" + parent.as_posix().removeprefix("./"))
            parent = parent.parent
    with tarfile.open(base) as src, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst:
        seen = set()
        for member in src:
            name = "./" + member.name.removeprefix("./") if member.name not in (".", "./") else "./"
            if name in wanted:
                continue  # replaced by the recipe's own file
            member.name = name
            seen.add(name.rstrip("/"))
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        for path in sorted(dirs - seen):
            dst.addfile(_info(path, tarfile.DIRTYPE, 0o755))
        for path, (content, mode) in sorted(wanted.items()):
            data = content.read_bytes() if isinstance(content, Path) else content
            dst.addfile(_info(path, tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))
    h = hashlib.sha256()
    with out.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _image_config(recipe: Recipe, layer_sha: str, key: str) -> bytes:
    config = recipe.config
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    env.update(config.get("env", {}))
    body: dict[str, Any] = {
        "Env": [f"{k}={v}" for k, v in env.items()],
        "Entrypoint": config.get("entrypoint") or None,
        "Cmd": config.get("cmd") or None,
        "WorkingDir": config.get("workdir", "/"),
        "Labels": {"org.hyops.recipe": recipe.key, "org.hyops.content": key},
    }
    if config.get("volumes"):
        body["Volumes"] = {v: {} for v in config["volumes"]}
    if config.get("ports"):
        body["ExposedPorts"] = {p: {} for p in config["ports"]}
    if config.get("stop_signal"):
        body["StopSignal"] = config["stop_signal"]
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH))
    document = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": body,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_sha}"]},
        "history": [{"created": created, "created_by": f"hyops image build {recipe.key}"}],
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _write_image(layer: Path, layer_sha: str, config: bytes, tag: str, out: Path) -> str:
    """The tar `docker load` takes (manifest.json, the config, the layer). Returns the image ID."""
    config_sha = hashlib.sha256(config).hexdigest()
    repo, _, version = tag.rpartition(":")
    manifest = [
        {"Config": f"{config_sha}.json", "RepoTags": [tag], "Layers": [f"{layer_sha}/layer.tar"]}
    ]
    repositories = {repo: {version: layer_sha}}
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, data: bytes) -> None:
            tar.addfile(_info(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))

        tar.addfile(_info(layer_sha, tarfile.DIRTYPE, 0o755))
        with layer.open("rb") as f:
            tar.addfile(
                _info(f"{layer_sha}/layer.tar", tarfile.REGTYPE, 0o644, layer.stat().st_size), f
            )
        add(f"{config_sha}.json", config)
        add("manifest.json", json.dumps(manifest).encode())
        add("repositories", json.dumps(repositories).encode())
    return f"sha256:{config_sha}"


def _prune(cache: Path, recipe: str, keep: int) -> list[Path]:
    """Remove all but the `keep` newest cache entries of `recipe` (an image is ~500 MB; every
    change of the agent's code makes a new one). Entries being written are left alone."""
    entries = []
    for meta in cache.glob("*/image.json"):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(meta.read_text()).get("recipe") == recipe:
                entries.append((meta.stat().st_mtime, meta.parent))
    removed = []
    for _, folder in sorted(entries, reverse=True)[keep:]:
        lock = cache / f".{folder.name}.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # someone is building or reading it
        try:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            os.close(fd)
    return removed


# --- building --------------------------------------------------------------------------------


def _what(
    name: str, inputs: dict[str, Path] | None, recipes: Path, repo: Path
) -> tuple[Recipe, dict[str, bytes], list[str], list[tuple[str, bytes]], str]:
    """The checked recipe, its inputs, pins, sources and content key."""
    try:
        recipe = load_recipe(name, recipes, repo)
    except RecipeError as exc:
        raise ImageError(str(exc)) from None
    if recipe.python and repo != REPO:
        raise ImageError(
            f"recipe {recipe.file}: python = true packs hyops's own code; a repository's recipe "
            "is Debian packages and its own [files] (remove python = true)"
        )
    given = _read_inputs(recipe, dict(inputs or {}))
    pins = python_pins() if recipe.python else []
    sources = _source_files(REPO) if recipe.python else []
    return recipe, given, pins, sources, content_key(recipe, given, pins, sources, repo)


def image_tag(
    name: str,
    inputs: dict[str, Path] | None = None,
    *,
    cache: Path | None = None,
    recipes: Path = RECIPES,
    repo: Path = REPO,
) -> tuple[str, bool]:
    """The tag `build_image` would give (REPOSITORY:HASH12) and whether it is cached, without
    building anything (what a plan shows). ImageError for a recipe with a problem."""
    recipe, _, _, _, key = _what(name, inputs, recipes, Path(repo).resolve())
    entry = (Path(cache) if cache is not None else cache_dir()) / key[:32]
    return f"{recipe.name}:{key[:12]}", (entry / "image.tar").is_file()


def cached_image(tag: str, cache: Path | None = None) -> Built | None:
    """The cached build whose tag is `tag` (REPOSITORY:HASH12), or None: what
    `(push-image! TAG)` carries again to a node that joined since."""
    cache = Path(cache) if cache is not None else cache_dir()
    for meta in sorted(cache.glob("*/image.json")):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(meta.read_text())
            if data.get("tag") == tag and (meta.parent / "image.tar").is_file():
                tar = meta.parent / "image.tar"
                return Built(str(data.get("recipe")), tag, data["image_id"], tar, True, 0.0)
    return None


def build_image(
    name: str,
    inputs: dict[str, Path] | None = None,
    *,
    output: Path | None = None,
    cache: Path | None = None,
    recipes: Path = RECIPES,
    repo: Path = REPO,
    log: Callable[[str], None] = lambda _line: None,
) -> Built:
    """Build image `name` (images/recipes/NAME.toml) with `inputs` (input name -> file), or take
    it from the cache when nothing it is made from changed. With `output`, the tar is also
    written into that folder as REPOSITORY-TAG.tar. ImageError says what went wrong.

    `recipes` and `repo` name another folder of recipes and the repository their `[files]` are
    in: a system's repository (repl/catalogue.py). Such a recipe cannot take this checkout's
    Python packages (`python = true`): it is made of Debian packages and its own files."""
    started = time.monotonic()
    repo = Path(repo).resolve()
    recipe, given, pins, sources, key = _what(name, inputs, recipes, repo)
    tag = f"{recipe.name}:{key[:12]}"
    cache = Path(cache) if cache is not None else cache_dir()
    entry = cache / key[:32]
    tar, meta = entry / "image.tar", entry / "image.json"
    cached = True
    with _locked(cache / f".{key[:32]}.lock"):
        if not (tar.is_file() and meta.is_file()):
            cached = False
            base = _base_rootfs(recipe, cache, log)
            log(f"{tag}: writing the image")
            with tempfile.TemporaryDirectory(prefix="hyops-image-", dir=cache) as tmp:
                extra: dict[str, Any] = {}
                if recipe.python:
                    extra.update(_python_tree(pins, sources, Path(tmp)))
                for dest, source in recipe.files.items():
                    mode = 0o755 if os.access(repo / source, os.X_OK) else 0o644
                    extra[dest] = ((repo / source).read_bytes(), mode)
                for input_name, data in given.items():
                    extra[recipe.inputs[input_name].path] = (data, 0o644)
                layer = Path(tmp) / "layer.tar"
                layer_sha = _write_layer(base, extra, layer)
                config = _image_config(recipe, layer_sha, key)
                partial = Path(tmp) / "image.tar"
                image_id = _write_image(layer, layer_sha, config, tag, partial)
                entry.mkdir(parents=True, exist_ok=True)  # only for a whole image
                os.replace(partial, tar)
            # entries are pruned per recipe; a repository's recipe (often hyops-image) by its
            # image's repository, so two systems' images do not push each other out
            label = name if repo == REPO else recipe.name
            data = {"recipe": label, "tag": tag, "image_id": image_id, "key": key}
            meta.write_text(json.dumps(data, indent=1) + "\n")
            _prune(cache, label, keep=KEEP)
    image_id = json.loads(meta.read_text())["image_id"]
    result = tar
    if output is not None:
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        result = output / f"{tag.replace('/', '-').replace(':', '-')}.tar"
        if not result.exists():
            partial = output / f".{result.name}.tmp"
            try:
                os.link(tar, partial)
            except OSError:
                shutil.copyfile(tar, partial)
            os.replace(partial, result)
    seconds = round(time.monotonic() - started, 2)
    return Built(name, tag, image_id, result, cached, seconds)
