"""A bootstrap list in a local file (`file:///abs/list.toml`): writers take a lock file beside
it, then replace the file whole (wire.files.write_atomic)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from wire.files import write_atomic
from wire.lists.format import EMPTY, BootstrapList, ListError, parse_list, render_list, stamped
from wire.lists.source import MAX_LIST_BYTES, ListSource, locked, too_large

__all__ = ["FileList"]


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
        """The list in the file; at most MAX_LIST_BYTES are read (a bigger file is refused)."""
        try:
            with self.path.open("rb") as f:
                data = f.read(MAX_LIST_BYTES + 1)
        except FileNotFoundError:
            return EMPTY
        except OSError as e:
            raise ListError(f"{self.where}: cannot read it ({e}); check the path") from None
        if len(data) > MAX_LIST_BYTES:
            raise too_large(self.where, f"more than {MAX_LIST_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ListError(f"{self.where}: cannot read it ({e}); check the path") from None
        return parse_list(text, self.url)

    def claim(self, lst: BootstrapList, by: str, replacing: BootstrapList | None = None) -> bool:
        with self._writing():
            if not self._claimable(self.read(), replacing):
                return False
            self._write(stamped(lst, by))
            return True

    def publish(self, lst: BootstrapList, by: str, message: str) -> bool:
        with self._writing():
            current = self.read()
            lst = self._of_same_cloud(current, lst)
            if current.same_cloud_state(lst):
                return False
            self._write(stamped(lst, by))
            return True

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        if not self.path.parent.is_dir():
            raise ListError(
                f"{self.where}: the folder {self.path.parent} does not exist; create it"
            )
        with locked(self.lock_path, self.where):
            yield

    def _write(self, lst: BootstrapList) -> None:
        text = render_list(lst)
        try:
            write_atomic(self.path, text, 0o644)
        except OSError as e:
            raise ListError(f"{self.where}: cannot write it: {e.strerror}") from None
