"""The agent's embedded SSH server: the operators' way onto a node when HTTP is not enough.

It offers three things, to operator keys of the cloud's trust file only (docs/logs-and-ssh.md):

- SFTP, read-only, of the node's log files: the regular `*.log` files directly in the configured
  log folder (agent.log, dockerd.log). Nothing else in or outside that folder can be listed, read
  or changed; `..`, absolute paths and symlinks lead nowhere.
- commands (`exec` requests), run by the agent's shell on the node; no interactive shell.
- direct-tcpip forwarding to the node's own API address and nothing else, so the API can be
  reached where only the SSH port is open.

The trust file is read again at every log-in, so adding or removing an operator takes effect
without restarting the agent. Agent forwarding, X11, remote forwarding, passwords and keyboard-
interactive log-ins are all off.

Limits, so nobody who merely reaches the port can tie the agent up: at most `MAX_CONNECTIONS`
connections at once and `MAX_PER_ADDRESS` from one source address (counted from the TCP
accept, so unauthenticated ones count too; they are dropped before the SSH handshake), at most
`MAX_AUTH_ATTEMPTS` keys offered per connection, and `LOGIN_TIMEOUT` seconds to log in. Each
refusal is one log line, naming the peer and never a secret. "logged in" is logged only once
asyncssh has checked the key's signature (`auth_completed`), never when a key is merely offered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import stat
from pathlib import Path
from typing import Any

import asyncssh

from node.config import SshConfig
from wire.signing import Trust, TrustError, fingerprint

log = logging.getLogger("hyops.sshd")

LOGS_ONLY = "only the node's log files (*.log in its log folder) can be read over SFTP"

MAX_CONNECTIONS = 64  # at once, per server
MAX_PER_ADDRESS = 16  # at once, from one source address (the workspace keeps one per node)
MAX_AUTH_ATTEMPTS = 6  # keys offered per connection (as OpenSSH's MaxAuthTries)
LOGIN_TIMEOUT = 20  # seconds from the TCP accept to a completed log-in


class Admission:
    """Counts open connections, in all and per source address, and says when one is too many.

    Shared by every connection of one server (the asyncssh server factory passes it on)."""

    def __init__(self, total: int = MAX_CONNECTIONS, per_address: int = MAX_PER_ADDRESS) -> None:
        self.total = total
        self.per_address = per_address
        self.open: dict[str, int] = {}

    def admit(self, address: str) -> str | None:
        """Count a new connection from `address` and return None; or, when it is one too many,
        count nothing and return why it is refused."""
        if sum(self.open.values()) >= self.total:
            return f"this node already has {self.total} SSH connections open"
        if self.open.get(address, 0) >= self.per_address:
            return f"{self.per_address} SSH connections from {address} are open already"
        self.open[address] = self.open.get(address, 0) + 1
        return None

    def release(self, address: str) -> None:
        """Forget one admitted connection from `address` (it closed)."""
        left = self.open.get(address, 0) - 1
        if left > 0:
            self.open[address] = left
        else:
            self.open.pop(address, None)


class SshdError(Exception):
    """The SSH server cannot start (host key unusable, address taken); the message says why."""


def allowed_log(folder: Path, requested: bytes) -> tuple[Path | None, str]:
    """Decide what an SFTP path means in the log folder: (local path, kind).

    kind is "root" for the folder itself, "log" for one of its `*.log` regular files (not a
    symlink), or "refused" (local path None). Pure apart from an lstat/realpath of the folder.
    """
    text = requested.decode("utf-8", "surrogateescape")
    norm = posixpath.normpath(posixpath.join("/", text))
    if norm == "/":
        return folder, "root"
    name = norm[1:]
    if "/" in name or not name.endswith(".log") or name.startswith("."):
        return None, "refused"
    local = folder / name
    try:
        st = os.lstat(local)
    except OSError:
        return None, "refused"
    if not stat.S_ISREG(st.st_mode) or local.resolve().parent != folder.resolve():
        return None, "refused"
    return local, "log"


class LogFolderSFTP(asyncssh.SFTPServer):
    """SFTP limited to reading the `*.log` files of one folder."""

    def __init__(self, chan: Any, folder: Path) -> None:
        self._folder = Path(folder)
        super().__init__(chan)

    def map_path(self, path: bytes) -> bytes:
        local, _ = allowed_log(self._folder, path)
        if local is None:
            raise asyncssh.SFTPPermissionDenied(LOGS_ONLY)
        return os.fsencode(local)

    def reverse_map_path(self, path: bytes) -> bytes:
        folder = os.fsencode(self._folder)
        if path == folder:
            return b"/"
        if path.startswith(folder + b"/"):
            return path[len(folder) :]
        raise asyncssh.SFTPNoSuchFile("no such log file")

    async def scandir(self, path: bytes):  # type: ignore[override]
        _, kind = allowed_log(self._folder, path)
        if kind != "root":
            raise asyncssh.SFTPPermissionDenied(LOGS_ONLY)
        for entry in sorted(os.listdir(self._folder)):
            file, kind = allowed_log(self._folder, entry.encode())
            if kind == "log" and file is not None:
                attrs = asyncssh.SFTPAttrs.from_local(os.lstat(file))
                yield asyncssh.SFTPName(entry.encode(), attrs=attrs)

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> Any:
        if pflags & ~asyncssh.FXF_READ:
            raise asyncssh.SFTPPermissionDenied("the node's logs are read-only")
        local, kind = allowed_log(self._folder, path)
        if kind != "log" or local is None:
            raise asyncssh.SFTPPermissionDenied(LOGS_ONLY)
        return open(local, "rb", buffering=0)  # asyncssh closes it

    def open56(self, *args: Any, **kwargs: Any) -> Any:
        raise asyncssh.SFTPOpUnsupported("use SFTP version 3 to 5")

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise asyncssh.SFTPPermissionDenied("the node's logs are read-only")

    write = setstat = lsetstat = fsetstat = remove = mkdir = rmdir = _read_only
    rename = posix_rename = symlink = link = _read_only


class NodeSSHServer(asyncssh.SSHServer):
    """One SSH connection's policy: who may log in, where forwarding may go."""

    def __init__(
        self,
        settings: SshConfig,
        trust_path: Path,
        api: tuple[str, int],
        admission: Admission | None = None,
    ) -> None:
        self._settings = settings
        self._trust_path = trust_path
        self._api = api
        self._admission = admission or Admission()
        self._admitted: str | None = None  # the source address counted in `admission`
        self._conn: asyncssh.SSHServerConnection | None = None
        self._peer = "?"
        self._offered = 0  # validate_public_key calls: a key's query, then its signed attempt
        self._keys: set[str] = set()  # the fingerprints offered on this connection
        self._accepted: str | None = None  # the operator whose key was accepted last
        self.operator: str | None = None  # set once the log-in has completed

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self._peer = f"{peer[0]}:{peer[1]}"
        refused = self._admission.admit(str(peer[0]))
        if refused is not None:
            log.warning("ssh: refused a connection from %s: %s", self._peer, refused)
            # raised before asyncssh sends its version: the connection is dropped at once,
            # before any key exchange (which would cost this node CPU per connection)
            raise asyncssh.DisconnectError(asyncssh.DISC_TOO_MANY_CONNECTIONS, refused)
        self._admitted = str(peer[0])

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted is not None:
            self._admission.release(self._admitted)
            self._admitted = None
        if self.operator:
            log.info("ssh: %s (%s) disconnected", self.operator, self._peer)
        elif self._accepted:
            log.warning(
                "ssh: a log-in as operator %s from %s failed (the key was offered, never "
                "proven by a valid signature)", self._accepted, self._peer,
            )  # fmt: skip

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """Whether `key` may log in (an operator's key of the trust file). asyncssh asks this
        both when a key is offered and before it checks the key's signature: it says nothing
        about the log-in having succeeded, which `auth_completed` does."""
        fp = fingerprint(key)
        self._offered += 1
        self._keys.add(fp)
        # each key is asked about twice (offered, then signed): count keys, and calls too
        if len(self._keys) > MAX_AUTH_ATTEMPTS or self._offered > 2 * MAX_AUTH_ATTEMPTS:
            log.warning(
                "ssh: refused %s: more than %d log-in attempts", self._peer, MAX_AUTH_ATTEMPTS
            )
            raise asyncssh.PermissionDenied(
                f"too many log-in attempts (at most {MAX_AUTH_ATTEMPTS} keys per connection)"
            )
        try:
            trust = Trust.load(self._trust_path)
        except TrustError as exc:
            log.error("ssh: cannot check log-ins, the trust file is unusable: %s", exc)
            return False
        trusted = trust.by_fingerprint(fp)
        if trusted is None or trusted.role != "operator":
            why = "not trusted" if trusted is None else f"a {trusted.role} key, not an operator's"
            log.warning("ssh: refused key %s from %s (%s)", fp, self._peer, why)
            self._accepted = None
            return False
        self._accepted = trusted.name
        return True

    def auth_completed(self) -> None:
        """The log-in succeeded: asyncssh checked the signature of the key last accepted."""
        self.operator = self._accepted
        if self._conn is not None:
            self._conn.set_extra_info(operator=self.operator)
        log.info("ssh: operator %s logged in from %s", self.operator, self._peer)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        if (dest_host, dest_port) == self._api:
            return True
        log.warning(
            "ssh: %s asked to forward to %s:%s: refused", self.operator, dest_host, dest_port
        )
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
            f"this node forwards only to its API at {self._api[0]}:{self._api[1]}",
        )

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False


async def run_command(process: asyncssh.SSHServerProcess) -> None:
    """Run an `exec` request's command with the node's shell; relay its streams and exit code."""
    operator = process.get_extra_info("operator")
    command = process.command
    if not command:
        process.stderr.write(
            "this node offers no interactive shell: give a command, e.g. ssh ... uptime\n"
        )
        process.exit(2)
        return
    log.info("ssh: %s runs %r", operator, command)
    proc = await asyncio.create_subprocess_shell(
        command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        # send_eof=False: asyncssh would otherwise send the channel's EOF as soon as *either*
        # output pipe ends, and the other's last bytes would then fail to send (BrokenPipeError
        # in asyncssh's copy task, which drops the whole connection: the client saw exit status
        # None and lost stderr, about one command in 15). EOF is sent once, below, after both.
        await process.redirect(
            stdin=proc.stdin, stdout=proc.stdout, stderr=proc.stderr, send_eof=False
        )
        code = await proc.wait()
        # drain() returns once the redirected pipe reached its end and was copied to the channel
        with contextlib.suppress(Exception):
            await asyncio.wait_for(process.stdout.drain(), 10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(process.stderr.drain(), 10)
        with contextlib.suppress(OSError):
            process.channel.write_eof()
        process.exit(code if code >= 0 else 128 - code)
        # asyncssh queues its pipe readers' clean-ups until wait_closed(); left unawaited, they
        # are collected as "coroutine never awaited" warnings, which can fire in the middle of an
        # import and trip CPython 3.11's import lock (a KeyError seen on an API request)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(process.wait_closed(), 10)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()


async def start_ssh(
    settings: SshConfig, trust_path: Path, api: tuple[str, int]
) -> asyncssh.SSHAcceptor:
    """Start the SSH server of `settings`; SshdError when it cannot (the message says why)."""
    try:
        host_key = asyncssh.read_private_key(str(settings.host_key))
    except FileNotFoundError:
        raise SshdError(
            f"ssh host key {settings.host_key}: no such file; hyops up makes one, or run "
            f"ssh-keygen -t ed25519 -N '' -f {settings.host_key}"
        ) from None
    except (OSError, asyncssh.KeyImportError, ValueError) as exc:
        raise SshdError(f"ssh host key {settings.host_key}: cannot use it ({exc})") from None
    admission = Admission()
    try:
        acceptor = await asyncssh.listen(
            settings.host,
            settings.port,
            server_factory=lambda: NodeSSHServer(settings, trust_path, api, admission),
            server_host_keys=[host_key],
            process_factory=run_command,
            sftp_factory=lambda chan: LogFolderSFTP(chan, settings.logs),
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
            password_auth=False,
            kbdint_auth=False,
            login_timeout=LOGIN_TIMEOUT,
            keepalive_interval=30,
        )
    except OSError as exc:
        raise SshdError(
            f"cannot listen for SSH on {settings.host}:{settings.port}: {exc.strerror}"
        ) from None
    log.info(
        "ssh on %s:%s (host key %s), logs from %s",
        settings.host,
        settings.port,
        fingerprint(host_key),
        settings.logs,
    )
    return acceptor
