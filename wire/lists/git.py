"""A bootstrap list in a git repository (`git+file:///abs/repo.git`, `git+https://…`,
`git+ssh://…`, with `#path/in/repo.toml`, default `hyops-list.toml`).

A clone is kept in the agent's data folder and fetched before every read; writes are commits
pushed without force, so a push that does not fast-forward means someone else wrote first.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from wire.lists.format import (
    EMPTY,
    BootstrapList,
    ListError,
    parse_list,
    redact_url,
    render_list,
    stamped,
)
from wire.lists.source import MAX_LIST_BYTES, ListSource, locked, too_large

__all__ = ["DEFAULT_PATH_IN_REPO", "GIT_TIMEOUT", "PUBLISH_TRIES", "GitList"]

DEFAULT_PATH_IN_REPO = "hyops-list.toml"
GIT_TIMEOUT = 60.0  # seconds for one git command; a hung remote must not hang the agent
PUBLISH_TRIES = 5
# Output of any other git command we run (refs, hashes, names): small; bounded all the same.
MAX_GIT_OUTPUT = 4 * 1024 * 1024
MAX_GIT_STDERR = 64 * 1024  # kept for the error message; the rest is read and dropped

_GIT_LOCATION_VARS = {
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
}


class _TooMuchOutput(Exception):
    """git wrote more than it was allowed to; it has been killed."""


def _run_bounded(
    command: list[str],
    cwd: Path,
    input: bytes | None,
    env: dict[str, str],
    max_stdout: int,
) -> subprocess.CompletedProcess[bytes]:
    """Run `command` with GIT_TIMEOUT for the whole run and at most `max_stdout` bytes of
    standard output; over either, its whole process group is killed (git's helpers, ssh and
    git-remote-https included, which would otherwise hold the pipes open) and
    subprocess.TimeoutExpired or _TooMuchOutput is raised. Standard error is kept up to
    MAX_GIT_STDERR bytes."""
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + GIT_TIMEOUT
    out, err = bytearray(), bytearray()
    pending = memoryview(input or b"")
    try:
        with selectors.DefaultSelector() as sel:
            assert proc.stdout is not None and proc.stderr is not None
            sel.register(proc.stdout, selectors.EVENT_READ, out)
            sel.register(proc.stderr, selectors.EVENT_READ, err)
            if proc.stdin is not None:
                if pending:
                    os.set_blocking(proc.stdin.fileno(), False)
                    sel.register(proc.stdin, selectors.EVENT_WRITE, None)
                else:
                    proc.stdin.close()
            while sel.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise subprocess.TimeoutExpired(command, GIT_TIMEOUT)
                for key, _ in sel.select(left):
                    if key.data is None:  # stdin
                        try:
                            sent = os.write(key.fd, pending[:65536])
                        except BrokenPipeError:
                            sent = len(pending)
                        pending = pending[sent:]
                        if not pending:
                            sel.unregister(key.fileobj)
                            key.fileobj.close()  # type: ignore[union-attr]
                        continue
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    if key.data is out:
                        out += chunk
                        if len(out) > max_stdout:
                            raise _TooMuchOutput
                    elif len(err) < MAX_GIT_STDERR:
                        err += chunk[: MAX_GIT_STDERR - len(err)]
        returncode = proc.wait(max(0.1, deadline - time.monotonic()))
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
    return subprocess.CompletedProcess(command, returncode, bytes(out), bytes(err))


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
        max_stdout: int = MAX_GIT_OUTPUT,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run git non-interactively, isolated from the user's config, with a timeout (the
        whole process group is killed when it passes) and at most `max_stdout` bytes of output
        (more is a ListError: the list is too large)."""
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
            result = _run_bounded(command, cwd or self.clone_dir, input, full_env, max_stdout)
        except subprocess.TimeoutExpired:
            raise ListError(
                f"{self.where}: git {args[0]} took more than {GIT_TIMEOUT:g} s; "
                "check that the repository is reachable"
            ) from None
        except _TooMuchOutput:
            raise too_large(self.where, f"more than {max_stdout} bytes") from None
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
        size = self._git("cat-file", "-s", f"{commit}:{self.path_in_repo}").stdout.strip()
        if int(size or 0) > MAX_LIST_BYTES:
            raise too_large(self.where, f"{size.decode()} bytes ({self.path_in_repo})")
        # Read with the cap as well: git is killed if it ever gives more than the list may hold.
        blob = self._git(
            "cat-file", "blob", f"{commit}:{self.path_in_repo}", max_stdout=MAX_LIST_BYTES
        )
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

    def claim(self, lst: BootstrapList, by: str, replacing: BootstrapList | None = None) -> bool:
        with self._session():
            branch, head = self._fetch()
            if not self._claimable(self._read_at(head), replacing):
                return False
            if lst.recovery:
                message = f"{by} recovers cloud {lst.cloud_id} (its managers moved)"
            else:
                message = f"{by} originates the cloud" + (
                    f" (the claim of {replacing.written_by} expired)" if replacing else ""
                )
            commit = self._commit(head, stamped(lst, by), by, message)
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
                commit = self._commit(head, stamped(lst, by), by, message)
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
        with locked(self.lock_path, self.where):
            self._ensure_clone()
            yield
