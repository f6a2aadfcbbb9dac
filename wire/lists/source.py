"""What every bootstrap list source is (`ListSource`), and the lock writers take."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from wire.lists.format import BootstrapList, ListError, redact_url

__all__ = ["LOCK_TIMEOUT", "MAX_LIST_BYTES", "READ_DEADLINE", "ListSource", "locked", "too_large"]

LOCK_TIMEOUT = 30.0
# A bootstrap list is a few KB (a handful of managers); a source that offers more than this is
# wrong or hostile, and is refused before more is read (nothing is parsed, nothing applied).
MAX_LIST_BYTES = 1024 * 1024
# Seconds for one whole read of a list over the network (HTTP: connect, headers and body
# together), however slowly the server sends it.
READ_DEADLINE = 30.0


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

    def claim(self, lst: BootstrapList, by: str, replacing: BootstrapList | None = None) -> bool:
        """Write `lst` only if the list is empty (or, given `replacing`, still exactly that
        version: an expired claim taken over); True only if our write is the one that won."""
        raise self._not_writable()

    def publish(self, lst: BootstrapList, by: str, message: str) -> bool:
        """Write `lst` if its cloud or managers differ from what is there; True if it wrote."""
        raise self._not_writable()

    @staticmethod
    def _claimable(current: BootstrapList, replacing: BootstrapList | None) -> bool:
        """Whether a claim may be written over `current`: the list is empty, or it is still
        the very version (an expired claim) the caller means to take over."""
        return current.is_empty if replacing is None else current == replacing

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


def too_large(where: str, size: str) -> ListError:
    """The refusal of a list bigger than MAX_LIST_BYTES (`size`: what we know of its size)."""
    return ListError(
        f"{where}: the list is {size}; at most {MAX_LIST_BYTES} bytes are read (a list is a few "
        "KB). Check that the URL points at the bootstrap list; nothing was read from it"
    )


@contextlib.contextmanager
def locked(lock_path: Path, what: str) -> Iterator[None]:
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
