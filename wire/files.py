"""Files written whole or not at all: the one helper for atomic writes with a fixed mode.

Every file the project writes that a reader may see half-written (keys, trust files, cloud
records, bootstrap lists, journals, the editor's files, manifests) goes through `write_atomic`:
a new temporary file beside the target, created with its final mode (never briefly wider),
flushed and synced, then renamed over the target. A failure leaves the old file as it was.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["PRIVATE", "PUBLIC", "write_atomic", "write_private"]

PRIVATE = 0o600
PUBLIC = 0o644


def write_atomic(
    path: str | Path,
    data: str | bytes,
    mode: int = PUBLIC,
    *,
    make_parent: bool = False,
    sync: bool = True,
) -> Path:
    """Write `data` to `path` through a temporary file created with `mode`, then rename it.

    `make_parent` creates missing folders (mode 0700, as private state wants). Returns the path.
    """
    path = Path(path)
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it; make it exactly `mode`
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_private(path: str | Path, data: str | bytes, *, sync: bool = True) -> Path:
    """`write_atomic` with mode 0600 and the parent folders made (0700): for anything secret."""
    return write_atomic(path, data, PRIVATE, make_parent=True, sync=sync)
