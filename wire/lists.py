"""The bootstrap list: the small public file that names a cloud and its managers.

The format and the sources are `docs/protocol.md` section 2. This module parses and renders the
format (`parse_list`, `render_list`) and reads and writes it at its source (`open_list`):

- `file:///abs/list.toml`: a file; writes take a lock file beside it, then rename a temp file.
- `http://…`, `https://…`: read with a GET; never writable.
- `git+file:///abs/repo.git`, `git+https://…`, `git+ssh://…` (`#path/in/repo.toml`, default
  `hyops-list.toml`): a clone kept in the agent's data folder, fetched before every read; writes
  are commits pushed without force, so a push that does not fast-forward means someone else
  wrote first.

`claim` is the origination tie-break: it writes only over an empty list and tells whether our
write won. `publish` writes a new version only when the managers changed.

The code is synchronous (it runs `git` and blocking HTTP); the agent calls it in a thread. A list
never holds a join token or a key: `render_list` refuses to write one, `parse_list` to read one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

__all__ = [
    "DEFAULT_PATH_IN_REPO",
    "FORMAT",
    "BootstrapList",
    "FileList",
    "GitList",
    "HttpList",
    "ListError",
    "ListSource",
    "Manager",
    "open_list",
    "parse_list",
    "redact_url",
    "render_list",
]

FORMAT = 1
DEFAULT_PATH_IN_REPO = "hyops-list.toml"
GIT_TIMEOUT = 60.0  # seconds for one git command; a hung remote must not hang the agent
HTTP_TIMEOUT = 10.0
LOCK_TIMEOUT = 30.0
PUBLISH_TRIES = 5

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):(\d{1,5})$")
_WRITTEN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
# Swarm join tokens, and any PEM or OpenSSH private key: never in a public list.
_SECRET = re.compile(r"SWMTKN-|PRIVATE KEY|BEGIN OPENSSH")
_GIT_LOCATION_VARS = {
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
}
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")


class ListError(Exception):
    """The bootstrap list cannot be read or written: which list, what is wrong, what to do."""


@dataclass(frozen=True)
class Manager:
    """A manager as the list names it: node name, Swarm address, node API URL."""

    name: str
    addr: str  # "host:2377"
    api: str  # "http://host:7300"


@dataclass(frozen=True)
class BootstrapList:
    """One version of a bootstrap list. With no managers it is empty: no cloud to join yet."""

    cloud_id: str | None
    managers: tuple[Manager, ...]
    written: str | None = None  # UTC, "2026-11-26T07:01:02Z"
    written_by: str | None = None

    @property
    def is_empty(self) -> bool:
        return not self.managers

    def same_cloud_state(self, other: BootstrapList) -> bool:
        """Whether both name the same cloud and the same managers (order and stamps aside)."""
        return self.cloud_id == other.cloud_id and sorted(self.managers, key=_key) == sorted(
            other.managers, key=_key
        )


EMPTY = BootstrapList(cloud_id=None, managers=())


def _key(m: Manager) -> tuple[str, str, str]:
    return (m.name, m.addr, m.api)


def redact_url(url: str) -> str:
    """`url` with any `user:password@` replaced by `***@`, for messages and logs."""
    return _CREDENTIALS.sub(r"\1***@", url)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the format ---------------------------------------------------------------------------------


def parse_list(text: str, source: str) -> BootstrapList:
    """The list in `text` (TOML, format 1); ListError naming `source` and each wrong field.

    Blank text (or only comments) is the empty list.
    """
    where = f"list {redact_url(source)}"
    if _SECRET.search(text):
        raise ListError(
            f"{where}: holds what looks like a join token or a private key; refusing to use "
            "it. Remove it from the list and rotate that secret (lists are public)"
        )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ListError(
            f"{where}: not valid TOML ({e}); expected the format in docs/protocol.md section 2"
        ) from None
    if not data:
        return EMPTY
    problems: list[str] = []
    fmt = data.get("format")
    if fmt is None:
        problems.append(f"format: missing; expected format = {FORMAT}")
    elif isinstance(fmt, bool) or not isinstance(fmt, int):
        problems.append(f"format: expected the number {FORMAT}, got {_show(fmt)}")
    elif fmt > FORMAT:
        raise ListError(
            f"{where}: format {fmt} is newer than this hyops understands (format {FORMAT}); "
            "upgrade hyops on this machine"
        )
    elif fmt != FORMAT:
        problems.append(f"format: expected {FORMAT}, got {fmt}")
    for key in data:
        if key not in ("format", "cloud_id", "written", "written_by", "manager"):
            known = "format, cloud_id, written, written_by, [[manager]]"
            problems.append(f"{key}: unknown field (known: {known})")
    cloud_id = _field(data, "cloud_id", _ID, 'an id like "c-5f0c8a1e"', problems)
    written = data.get("written")
    if isinstance(written, dt.datetime) and written.tzinfo is not None:
        written = written.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        data = {**data, "written": written}
    written = _field(data, "written", _WRITTEN, 'UTC time like "2026-11-26T07:01:02Z"', problems)
    written_by = _field(data, "written_by", _NAME, "a node name", problems)
    entries = data.get("manager", [])
    managers: list[Manager] = []
    if not isinstance(entries, list):
        problems.append("manager: expected [[manager]] tables")
        entries = []
    for i, entry in enumerate(entries, 1):
        label = f"[[manager]] #{i}"
        if not isinstance(entry, dict):
            problems.append(f"{label}: expected a table")
            continue
        for key in entry:
            if key not in ("name", "addr", "api"):
                problems.append(f"{label} {key}: unknown field (known: name, addr, api)")
        name = _field(entry, "name", _NAME, 'a node name like "node-1"', problems, label, True)
        addr = _field(entry, "addr", _HOST_PORT, '"host:2377"', problems, label, True)
        api = entry.get("api")
        if api is None:
            problems.append(f'{label} api: missing; expected a URL like "http://10.0.0.1:7300"')
        elif not _api_url_ok(api):
            problems.append(
                f'{label} api: expected a URL like "http://10.0.0.1:7300", got {_show(api)}'
            )
        if name and addr and _api_url_ok(api):
            managers.append(Manager(name=name, addr=addr, api=api))
    names = [m.name for m in managers]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"[[manager]] name: {name!r} is listed more than once")
    if managers and cloud_id is None and "cloud_id" not in data:
        problems.append("cloud_id: missing; a list that names managers must name their cloud")
    if problems:
        raise ListError(
            f"{where}: wrong format: "
            + "; ".join(problems)
            + ". Fix the list (docs/protocol.md section 2)"
        )
    return BootstrapList(cloud_id, tuple(managers), written, written_by)


def _field(
    table: dict[str, Any],
    key: str,
    pattern: re.Pattern[str],
    expected: str,
    problems: list[str],
    label: str = "",
    required: bool = False,
) -> str | None:
    prefix = f"{label} {key}" if label else key
    if key not in table:
        if required:
            problems.append(f"{prefix}: missing; expected {expected}")
        return None
    value = table[key]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        problems.append(f"{prefix}: expected {expected}, got {_show(value)}")
        return None
    if pattern is _HOST_PORT and not 1 <= int(pattern.fullmatch(value).group(2)) <= 65535:
        problems.append(f"{prefix}: expected {expected} with a port 1-65535, got {_show(value)}")
        return None
    return value


def _api_url_ok(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and "@" not in parts.netloc


def _show(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)


def _toml_string(text: str) -> str:
    # JSON's escapes are a subset of TOML's basic-string escapes; DEL is the one gap.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def render_list(lst: BootstrapList) -> str:
    """The list as TOML (format 1). Refuses (ListError) anything it could not read back, and
    any value that looks like a token or a key."""
    values = [lst.cloud_id, lst.written, lst.written_by]
    values += [v for m in lst.managers for v in (m.name, m.addr, m.api)]
    for value in values:
        if value is not None and _SECRET.search(value):
            raise ListError("refusing to write a join token or a key into a bootstrap list")
    lines = [
        "# hyops bootstrap list (docs/protocol.md section 2). Public: never a token or a key.",
        f"format = {FORMAT}",
    ]
    for key in ("cloud_id", "written", "written_by"):
        value = getattr(lst, key)
        if value is not None:
            lines.append(f"{key} = {_toml_string(value)}")
    for m in lst.managers:
        lines += [
            "",
            "[[manager]]",
            f"name = {_toml_string(m.name)}",
            f"addr = {_toml_string(m.addr)}",
            f"api = {_toml_string(m.api)}",
        ]
    text = "\n".join(lines) + "\n"
    # Whatever we write, every reader must be able to read: check by reading it back.
    back = parse_list(text, "(about to be written)")
    if back != dataclasses.replace(lst, managers=tuple(lst.managers)):
        raise ListError("internal error: the rendered list does not read back the same")
    return text


def _stamped(lst: BootstrapList, by: str) -> BootstrapList:
    return dataclasses.replace(lst, managers=tuple(lst.managers), written=_now(), written_by=by)


# --- sources ------------------------------------------------------------------------------------


def open_list(url: str, work_dir: Path) -> ListSource:
    """The list source for `url`. `work_dir` is where a git clone is kept (the agent's data)."""
    scheme = urlsplit(url).scheme
    if scheme == "file":
        return FileList(url)
    if scheme in ("http", "https"):
        return HttpList(url)
    if scheme in ("git+file", "git+https", "git+ssh"):
        return GitList(url, Path(work_dir))
    raise ListError(
        f"list {redact_url(url)}: unknown kind of URL; expected file:///…, http(s)://…, "
        "git+file:///…, git+https://… or git+ssh://…"
    )


class ListSource:
    """Where a bootstrap list lives. Subclasses read it, and write it when `writable`."""

    url: str
    writable: bool = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact_url(self.url)}>"

    @property
    def where(self) -> str:
        return f"list {redact_url(self.url)}"

    def read(self) -> BootstrapList:
        """The list as it is at the source now."""
        raise NotImplementedError

    def claim(self, lst: BootstrapList, by: str) -> bool:
        """Write `lst` only if the list is empty; True only if our write is the one that won."""
        raise self._not_writable()

    def publish(self, lst: BootstrapList, by: str, message: str) -> bool:
        """Write `lst` if its cloud or managers differ from what is there; True if it wrote."""
        raise self._not_writable()

    def _not_writable(self) -> ListError:
        return ListError(
            f"{self.where}: not writable (an http(s) list is read-only); originate the cloud "
            "on a machine whose list is a git repository or a file, and publish that"
        )

    def _of_same_cloud(self, current: BootstrapList, lst: BootstrapList) -> BootstrapList:
        """`lst`, naming the cloud `current` names when it names none (a cloud id never
        changes); ListError if the two name different clouds."""
        if lst.cloud_id is None:
            return dataclasses.replace(lst, cloud_id=current.cloud_id)
        if current.cloud_id and current.cloud_id != lst.cloud_id:
            raise ListError(
                f"{self.where}: names cloud {current.cloud_id}, not {lst.cloud_id}; refusing to "
                "overwrite another cloud's list. Point this node at its own cloud's list"
            )
        return lst


@contextlib.contextmanager
def _locked(lock_path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (processes and threads alike), with a deadline."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ListError(f"{what}: cannot create the lock file {lock_path}: {e.strerror}") from None
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ListError(
                        f"{what}: {lock_path} stayed locked for {LOCK_TIMEOUT:g} s; another "
                        "writer is stuck. Stop it, then try again"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class FileList(ListSource):
    """A list in a local file. Writers serialize on `<file>.lock` and replace the file whole."""

    writable = True

    def __init__(self, url: str):
        self.url = url
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ListError(f"list {url}: expected file:///absolute/path/list.toml")
        self.path = Path(unquote(parts.path))
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    def read(self) -> BootstrapList:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return EMPTY
        except (OSError, UnicodeDecodeError) as e:
            raise ListError(f"{self.where}: cannot read it ({e}); check the path") from None
        return parse_list(text, self.url)

    def claim(self, lst: BootstrapList, by: str) -> bool:
        with self._writing():
            if not self.read().is_empty:
                return False
            self._write(_stamped(lst, by))
            return True

    def publish(self, lst: BootstrapList, by: str, message: str) -> bool:
        with self._writing():
            current = self.read()
            lst = self._of_same_cloud(current, lst)
            if current.same_cloud_state(lst):
                return False
            self._write(_stamped(lst, by))
            return True

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        if not self.path.parent.is_dir():
            raise ListError(
                f"{self.where}: the folder {self.path.parent} does not exist; create it"
            )
        with _locked(self.lock_path, self.where):
            yield

    def _write(self, lst: BootstrapList) -> None:
        text = render_list(lst)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        try:
            with open(tmp, "x", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise ListError(f"{self.where}: cannot write it: {e.strerror}") from None


class HttpList(ListSource):
    """A list served over HTTP(S). Read-only: `claim` and `publish` raise ListError."""

    writable = False

    def __init__(self, url: str):
        self.url = url

    def read(self) -> BootstrapList:
        try:
            response = httpx.get(self.url, timeout=HTTP_TIMEOUT, follow_redirects=True)
        except httpx.HTTPError as e:
            raise ListError(
                f"{self.where}: unreachable ({type(e).__name__}: "
                f"{redact_url(str(e)) or 'no answer'}); check the URL and that the server is up"
            ) from None
        if response.status_code == 404:
            return EMPTY  # no file at all is an empty list (docs/protocol.md section 2)
        if response.status_code != 200:
            raise ListError(
                f"{self.where}: the server answered HTTP {response.status_code}; "
                "check the URL and the server"
            )
        try:
            text = response.content.decode("utf-8")
        except UnicodeDecodeError:
            raise ListError(f"{self.where}: not UTF-8 text; expected a TOML list") from None
        return parse_list(text, self.url)


class GitList(ListSource):
    """A list in a git repository, read from a clone in `work_dir` and written by pushing.

    The clone is kept at `work_dir/list-<hash of the remote>`. Reads fetch and take the file
    from the remote branch itself (so a half-finished local state can never be read); writes
    build a commit with git's plumbing on top of what was fetched and push it without force.
    The branch is the remote's default (or `main`, else `master`, else the only branch); an
    empty repository gets `main`.
    """

    writable = True

    def __init__(self, url: str, work_dir: Path):
        self.url = url
        parts = urlsplit(url)
        remote = url.split("#", 1)[0][len("git+") :]
        self.remote = remote
        path_in_repo = unquote(parts.fragment) or DEFAULT_PATH_IN_REPO
        pure = PurePosixPath(path_in_repo)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts:
            raise ListError(
                f"{self.where}: the path after # must be relative inside the repository, "
                f"got {path_in_repo!r}"
            )
        if parts.scheme == "git+file" and not parts.path.startswith("/"):
            raise ListError(f"{self.where}: expected git+file:///absolute/path/repo.git")
        self.path_in_repo = str(pure)
        self.work_dir = Path(work_dir)
        digest = hashlib.sha256(remote.encode()).hexdigest()[:12]
        self.clone_dir = self.work_dir / f"list-{digest}"
        self.lock_path = self.work_dir / f"list-{digest}.lock"

    # -- git plumbing --

    def _git(
        self,
        *args: str,
        cwd: Path | None = None,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
        by: str = "hyops-agent",
    ) -> subprocess.CompletedProcess[bytes]:
        """Run git non-interactively, isolated from the user's config, with a timeout."""
        # Variables that would point git at another repository than the one we mean.
        inherited = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARS}
        full_env = {
            **inherited,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "LC_ALL": "C",
            **(env or {}),
        }
        full_env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        email = f"{by}@hyops.invalid"
        command = [
            "git",
            "-c", "safe.directory=*",
            "-c", "user.name=hyops-agent",
            "-c", f"user.email={email}",
            "-c", "commit.gpgsign=false",
            "-c", "core.hooksPath=/dev/null",
            *args,
        ]  # fmt: skip
        try:
            result = subprocess.run(
                command,
                cwd=cwd or self.clone_dir,
                input=input,
                env=full_env,
                capture_output=True,
                timeout=GIT_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ListError(
                f"{self.where}: git {args[0]} took more than {GIT_TIMEOUT:g} s; "
                "check that the repository is reachable"
            ) from None
        except FileNotFoundError:
            raise ListError(f"{self.where}: git is not installed; apt-get install git") from None
        if check and result.returncode != 0:
            raise ListError(f"{self.where}: git {args[0]} failed: {self._stderr(result)}")
        return result

    def _stderr(self, result: subprocess.CompletedProcess[bytes]) -> str:
        text = result.stderr.decode(errors="replace").strip()
        lines = [line for line in text.splitlines() if not line.startswith("hint:")]
        return redact_url(" / ".join(lines)[-800:]) or f"exit status {result.returncode}"

    def _ensure_clone(self) -> None:
        if (self.clone_dir / ".git").is_dir():
            url = self._git("config", "--get", "remote.origin.url", check=False)
            if url.returncode == 0 and url.stdout.decode().strip() == self.remote:
                return
        if self.clone_dir.exists():
            shutil.rmtree(self.clone_dir)  # our own folder, named after the remote
        result = self._git(
            "clone",
            "--quiet",
            "--no-checkout",
            self.remote,
            str(self.clone_dir),
            cwd=self.work_dir,
            check=False,
        )
        if result.returncode != 0:
            shutil.rmtree(self.clone_dir, ignore_errors=True)
            raise ListError(
                f"{self.where}: unreachable (git clone: {self._stderr(result)}); check the URL, "
                "that the repository exists, and this machine's access to it"
            )

    def _fetch(self) -> tuple[str, str | None]:
        """Fetch; return the branch the list lives on and the commit it is at (None: empty)."""
        result = self._git("fetch", "--quiet", "--prune", "origin", check=False)
        if result.returncode != 0:
            raise ListError(
                f"{self.where}: unreachable (git fetch: {self._stderr(result)}); check the URL "
                "and this machine's access to it"
            )
        branch = self._branch()
        head = self._git(
            "rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{branch}", check=False
        )
        return branch, (head.stdout.decode().strip() or None) if head.returncode == 0 else None

    def _branch(self) -> str:
        head = self._git("symbolic-ref", "--quiet", "refs/remotes/origin/HEAD", check=False)
        if head.returncode == 0:
            return head.stdout.decode().strip().removeprefix("refs/remotes/origin/")
        refs = self._git("for-each-ref", "--format=%(refname:strip=3)", "refs/remotes/origin/")
        branches = [b for b in refs.stdout.decode().split() if b != "HEAD"]
        if not branches:
            return "main"  # an empty repository: every writer picks the same branch
        for preferred in ("main", "master"):
            if preferred in branches:
                return preferred
        if len(branches) == 1:
            return branches[0]
        raise ListError(
            f"{self.where}: the repository has several branches ({', '.join(branches)}) and no "
            "default; set its HEAD, or keep the list on main"
        )

    def _read_at(self, commit: str | None) -> BootstrapList:
        if commit is None:
            return EMPTY
        listed = self._git("ls-tree", "--name-only", commit, "--", self.path_in_repo)
        if not listed.stdout.strip():
            return EMPTY
        blob = self._git("cat-file", "blob", f"{commit}:{self.path_in_repo}")
        try:
            text = blob.stdout.decode("utf-8")
        except UnicodeDecodeError:
            raise ListError(f"{self.where}: not UTF-8 text; expected a TOML list") from None
        return parse_list(text, self.url)

    def _commit(self, parent: str | None, lst: BootstrapList, by: str, message: str) -> str:
        """A commit of `parent`'s tree with the list file replaced; nothing is checked out."""
        blob = self._git("hash-object", "-w", "--stdin", input=render_list(lst).encode())
        index = self.clone_dir / ".git" / f"hyops-index-{secrets.token_hex(4)}"
        env = {"GIT_INDEX_FILE": str(index)}
        try:
            if parent:
                self._git("read-tree", parent, env=env)
            else:
                self._git("read-tree", "--empty", env=env)
            info = f"100644,{blob.stdout.decode().strip()},{self.path_in_repo}"
            self._git("update-index", "--add", "--cacheinfo", info, env=env)
            tree = self._git("write-tree", env=env).stdout.decode().strip()
        finally:
            index.unlink(missing_ok=True)
        args = ["commit-tree", tree, "-m", message]
        if parent:
            args += ["-p", parent]
        return self._git(*args, by=by).stdout.decode().strip()

    def _push(self, commit: str, branch: str) -> subprocess.CompletedProcess[bytes]:
        # No force: a push that does not fast-forward is refused, which is the tie-break.
        return self._git("push", "--quiet", "origin", f"{commit}:refs/heads/{branch}", check=False)

    # -- the source interface --

    def read(self) -> BootstrapList:
        with self._session():
            _, head = self._fetch()
            return self._read_at(head)

    def claim(self, lst: BootstrapList, by: str) -> bool:
        with self._session():
            branch, head = self._fetch()
            if not self._read_at(head).is_empty:
                return False
            commit = self._commit(head, _stamped(lst, by), by, f"{by} originates the cloud")
            pushed = self._push(commit, branch)
            if pushed.returncode == 0:
                return True
            _, now = self._fetch()
            if now == commit:
                return True  # the push landed although git reported an error
            if now != head:
                return False  # someone else wrote first: they originate
            raise ListError(
                f"{self.where}: git push failed: {self._stderr(pushed)}; check that this "
                "machine may push to the repository"
            )

    def publish(self, lst: BootstrapList, by: str, message: str) -> bool:
        with self._session():
            for _ in range(PUBLISH_TRIES):
                branch, head = self._fetch()
                current = self._read_at(head)
                lst = self._of_same_cloud(current, lst)
                if current.same_cloud_state(lst):
                    return False
                commit = self._commit(head, _stamped(lst, by), by, message)
                pushed = self._push(commit, branch)
                if pushed.returncode == 0:
                    return True
                _, now = self._fetch()
                if now == commit:
                    return True
                if now == head:
                    raise ListError(
                        f"{self.where}: git push failed: {self._stderr(pushed)}; check that "
                        "this machine may push to the repository"
                    )
                # Someone else pushed in between: read their version and try again.
            raise ListError(
                f"{self.where}: other writers kept changing the list; gave up after "
                f"{PUBLISH_TRIES} tries. It will be published on the next round"
            )

    @contextlib.contextmanager
    def _session(self) -> Iterator[None]:
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise ListError(
                    f"{self.where}: cannot create {self.work_dir}: {e.strerror}"
                ) from None
        with _locked(self.lock_path, self.where):
            self._ensure_clone()
            yield
