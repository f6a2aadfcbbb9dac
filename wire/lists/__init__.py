"""The bootstrap list: the small public file that names a cloud and its managers.

The format and the sources are `docs/protocol.md` section 2. `format` parses and renders the
format (`parse_list`, `render_list`); one module per source reads and writes it there, and
`open_list` picks the source by the URL (`source` is what they all are):

- `file:///abs/list.toml` (`file`): a file; writes take a lock file beside it, then replace
  the file whole.
- `http://…`, `https://…` (`http`): read with a GET; never writable.
- `git+file:///abs/repo.git`, `git+https://…`, `git+ssh://…` (`git`; `#path/in/repo.toml`,
  default `hyops-list.toml`): a clone kept in the agent's data folder, fetched before every
  read; writes are commits pushed without force, so a push that does not fast-forward means
  someone else wrote first.

`claim` is the origination tie-break: it writes only over an empty list and tells whether our
write won. `publish` writes a new version only when the managers changed.

The code is synchronous (it runs `git` and blocking HTTP); the agent calls it in a thread. A list
never holds a join token or a key: `render_list` refuses to write one, `parse_list` to read one.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from wire.lists.file import FileList
from wire.lists.format import (
    FORMAT,
    BootstrapList,
    ListError,
    Manager,
    parse_list,
    redact_url,
    render_list,
)
from wire.lists.git import DEFAULT_PATH_IN_REPO, PUBLISH_TRIES, GitList
from wire.lists.http import HttpList
from wire.lists.source import ListSource

__all__ = [
    "DEFAULT_PATH_IN_REPO",
    "FORMAT",
    "PUBLISH_TRIES",
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
