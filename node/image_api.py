"""The node API's image routes: images carried to a node without a registry (decision 0026).

- `GET /v1/images?id=sha256:…`: whether this node's engine has that image, with its tags.
- `POST /v1/images?id=sha256:…&sha256=HEX`: the body is a `docker load` tar, streamed. The
  request is signed over the tar's sha256 (`sha256`, wire/signing.py `body_digest`), so the
  signature, the role (operator) and the audience (this node) are checked from the headers
  before a byte of the body is read; the body goes to a file under the agent's data folder,
  hashed as it comes, and is refused when it is not the signed digest, over `MAX_IMAGE`, or not
  exactly one image whose ID is `id` with the layers its config lists (wire/images.py). Only then
  does the engine load it (`POST /images/load`, streamed from the file). Nothing is loaded from
  a refused tar; the file is removed either way.

Both are answered by the node itself (signed for `CLOUD/NODE`): the workspace sends an image to
each node's agent (repl/imagepush.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse

from node.errors import AgentError
from wire.images import IMAGES_ROUTE, MAX_IMAGE, ImageTarError, check_image_tar, image_id_ok
from wire.signing import AuthError, TrustedKey, require_role

__all__ = ["add_image_routes"]

log = logging.getLogger("hyops.images")
_HEX = frozenset("0123456789abcdef")


def _bad(message: str, hint: str) -> AgentError:
    return AgentError("invalid", "bad-image", message, hint)


def _check_id(image_id: str) -> None:
    if not image_id_ok(image_id):
        raise _bad(
            f"id: {image_id!r} is not an image ID",
            "give the image's ID: sha256: and 64 hex digits (hyops image build prints it)",
        )


def _early_refusal(exc: AuthError | AgentError) -> JSONResponse:
    """A refusal before the body was read, in the API's error shape; the connection is closed
    after it (the unread body is never taken in)."""
    if isinstance(exc, AuthError):
        status, code, message, hint = exc.status, exc.code, exc.message, exc.hint
    else:
        status = {"invalid": 400, "unavailable": 503}.get(exc.kind, 409)
        code, message, hint = exc.code, exc.message, exc.hint
    return JSONResponse(
        {"error": code, "message": message, "hint": hint},
        status_code=status,
        headers={"Connection": "close"},
    )


def add_image_routes(
    app: FastAPI,
    agent: Any,
    audiences: Callable[[Request], set[str]],
    readers: Any,
) -> None:
    """Add `GET` and `POST /v1/images` to `app` (see the module's docstring). Tars an earlier
    run of the agent left half-received (it stopped mid-upload) are removed now."""
    incoming = Path(agent.config.data_dir) / "incoming"
    for stale in incoming.glob("image-*.tar") if incoming.is_dir() else []:
        with contextlib.suppress(OSError):
            stale.unlink()

    def admit(request: Request, image_id: str, sha256: str) -> tuple[TrustedKey, str, int]:
        """The key that signed the request, the signed digest and the body's length: checked
        from the headers alone, before the body is read."""
        digest = sha256.lower()
        if len(digest) != 64 or not set(digest) <= _HEX:
            raise _bad("sha256: expected the tar's sha256, 64 hex digits", "hyops signs it")
        key = agent.verifier.verify(
            request.method,
            request.url.path + "?" + request.url.query,
            b"",
            request.headers,
            audiences(request),
            body_digest=digest,
        )
        require_role(key, "operator")
        _check_id(image_id)
        length = request.headers.get("content-length", "")
        if not length.isdigit():
            raise AgentError(
                "invalid", "length-required", "an image tar is sent with its Content-Length",
                "send the file with its length (hyops does)",
            )  # fmt: skip
        if int(length) > MAX_IMAGE:
            raise AgentError(
                "invalid", "too-large", f"the tar is {length} bytes; at most {MAX_IMAGE} are taken",
                "build a smaller image (fewer packages)",
            )  # fmt: skip
        return key, digest, int(length)

    @app.get(IMAGES_ROUTE, tags=["images"])
    async def has_image(
        id: str = Query(description="the image's ID, sha256:…"),
        key: TrustedKey = Depends(readers),
    ) -> dict[str, Any]:
        """Whether this node's engine has the image, and its tags."""
        _check_id(id)
        found = await agent.ops.engine.image(id)
        tags = sorted(found.get("RepoTags") or []) if found else []
        return {"node": agent.name, "id": id, "present": found is not None, "tags": tags}

    @app.post(IMAGES_ROUTE, tags=["images"])
    async def load_image(
        request: Request,
        id: str = Query("", description="the image's ID, sha256:… (its config's sha256)"),
        sha256: str = Query(
            "", description="the tar's sha256 (hex): what the request is signed over"
        ),
    ) -> Any:
        """Load one image from a `docker load` tar sent as the body (operators only; see the
        module's docstring for what is checked before anything is loaded). Both parameters are
        checked here, not by the framework: any refusal before the body is read closes the
        connection."""
        try:
            key, digest, length = admit(request, id, sha256)
        except (AuthError, AgentError) as exc:
            return _early_refusal(exc)
        incoming.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="image-", suffix=".tar", dir=incoming)
        path = Path(name)
        try:
            h, size = hashlib.sha256(), 0
            with open(fd, "wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > length:
                        raise _bad("the body is longer than its Content-Length", "send it again")
                    h.update(chunk)
                    await asyncio.to_thread(out.write, chunk)
            if h.hexdigest() != digest:
                log.warning("refused an image from %s: the body is not what was signed", key.name)
                raise _bad(
                    f"the tar's sha256 is {h.hexdigest()[:16]}…, not {digest[:16]}… as signed: "
                    "it changed on the way; nothing was loaded",
                    "send it again",
                )
            try:
                tags = await asyncio.to_thread(check_image_tar, path, id)
            except ImageTarError as exc:
                log.warning("refused an image from %s: %s", key.name, exc)
                raise _bad(
                    f"refused, nothing was loaded: {exc}",
                    "build the image again (hyops image build) and send the tar it wrote",
                ) from None
            said = await agent.ops.engine.image_load(path)
            found = await agent.ops.engine.image(id)
            if found is None:
                raise AgentError(
                    "unavailable", "not-loaded", f"the engine took the tar but has no image {id}",
                    f"the engine said: {'; '.join(said) or 'nothing'}",
                )  # fmt: skip
            log.info("image %s (%s) loaded (sent by %s)", id[:19], ", ".join(tags), key.name)
            return {
                "node": agent.name,
                "id": id,
                "tags": sorted(found.get("RepoTags") or []),
                "size": size,
                "loaded": True,
            }
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
