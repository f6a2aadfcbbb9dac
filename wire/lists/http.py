"""A bootstrap list served over HTTP(S) (`http://…`, `https://…`): read with a GET, never
written."""

from __future__ import annotations

import httpx

from wire.lists.format import EMPTY, BootstrapList, ListError, parse_list, redact_url
from wire.lists.source import ListSource

__all__ = ["HTTP_TIMEOUT", "HttpList"]

HTTP_TIMEOUT = 10.0


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
