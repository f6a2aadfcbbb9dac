"""Images carried to the nodes without a registry: the plumbing under `(push-image! ...)` and
`(install! ...)` (ops/catalogue.hy), decision 0026.

The workspace asks a manager for the nodes, then each ready node's own agent whether its engine
has the image (`GET /v1/images?id=`); to those that lack it, it sends the `docker load` tar
(`POST /v1/images`, signed over the tar's sha256, streamed from the file), all nodes at once on
the Session's loop. Each node answers for itself: what was loaded, what was there already, and
which nodes could not be reached or refused, and why. The agent checks the tar before loading
anything (wire/images.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import tarfile
from pathlib import Path
from typing import Any

from repl.cloud import CloudError, Connection, agent_url
from wire.images import IMAGES_ROUTE, file_sha256

__all__ = [
    "TarImage",
    "carry",
    "carry_everywhere",
    "image_in_tar",
    "recipe_or_tar",
    "target_nodes",
]


class TarImage:
    """An image tar to carry: its file, the image's ID (its config's sha256) and tags."""

    def __init__(self, tar: Path, image_id: str, tags: list[str]) -> None:
        self.tar = Path(tar)
        self.image_id = image_id
        self.tags = tags

    def __repr__(self) -> str:
        return f"TarImage({str(self.tar)!r}, {self.image_id[:19]}, {self.tags})"


def image_in_tar(path: Path) -> TarImage:
    """The image a `docker load` tar says it holds: its ID (the sha256 of its config) and
    tags. The nodes check the rest (every layer against the config) before loading it.
    CloudError when the file is not such a tar."""
    path = Path(path).expanduser()
    hint = "give a tar `hyops image build` or `docker save` wrote, or a recipe's name"
    if not path.is_file():
        raise CloudError(f"{path}: no such file", code="bad-image", hint=hint)
    try:
        with tarfile.open(path, "r:") as tar:
            manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
            if not isinstance(manifest, list) or len(manifest) != 1:
                raise ValueError("manifest.json lists more or fewer than one image")
            config = tar.extractfile(manifest[0]["Config"]).read()  # type: ignore[union-attr]
            tags = [str(t) for t in manifest[0].get("RepoTags") or []]
    except (tarfile.TarError, KeyError, ValueError, TypeError, AttributeError, OSError) as exc:
        raise CloudError(
            f"{path}: not a tar of one image ({exc})", code="bad-image", hint=hint
        ) from None
    return TarImage(path, "sha256:" + hashlib.sha256(config).hexdigest(), tags)


async def target_nodes(conn: Connection) -> list[dict[str, Any]]:
    """The nodes an image goes to: every node that is ready (a down one gets it when it is
    carried again)."""
    nodes = await conn.request("GET", "/v1/nodes")
    return [n for n in nodes if n.get("state") == "ready" and agent_url(n)]


async def _carry_one(
    conn: Connection, node: dict[str, Any], image: TarImage, digest: str
) -> dict[str, Any]:
    """One node: ask whether it has the image with its tags, send the tar if not."""
    from wire.client import NodeApiError

    row: dict[str, Any] = {"node": node.get("name"), "image": image.image_id[:19]}
    try:
        client = await conn.node(str(agent_url(node)))
        have = await client.get(IMAGES_ROUTE, id=image.image_id)
        if have.get("present") and set(image.tags) <= set(have.get("tags") or []):
            return row | {"result": "present", "tags": have.get("tags")}
        # absent, or there without its tags (untagged while a container used it): loaded again
        answer = await client.upload(
            IMAGES_ROUTE,
            image.tar,
            digest=digest,
            params={"id": image.image_id, "sha256": digest},
        )
        return row | {"result": "loaded", "tags": answer.get("tags"), "size": answer.get("size")}
    except NodeApiError as exc:
        return row | {"result": "failed", "error": exc.message, "hint": exc.hint}


async def carry(
    conn: Connection, image: TarImage, nodes: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Carry `image` to each of `nodes` at once; a row per node: `present` (it had it),
    `loaded`, or `failed` with the node's error (a tar it refused: nothing was loaded)."""
    digest = await asyncio.to_thread(file_sha256, image.tar)  # once, for every node
    return list(await asyncio.gather(*(_carry_one(conn, n, image, digest) for n in nodes)))


def carry_everywhere(session: Any, image: TarImage) -> list[dict[str, Any]]:
    """Carry `image` to every ready node of the Session's cloud (blocks on its loop). CloudError
    naming each node that failed, and why, when one did (the others keep the image)."""
    from repl.cloud import connection

    conn = connection(session)
    rows = session.run(carry(conn, image, session.run(target_nodes(conn))))
    failed = [r for r in rows if r["result"] == "failed"]
    if failed:
        raise CloudError(
            f"{image.tags[0] if image.tags else image.image_id[:19]} did not reach "
            + "; ".join(f"{r['node']}: {r['error']}" for r in failed),
            code="image-not-carried",
            hint=failed[0].get("hint") or "carry it again with (push-image! ...)",
        )
    return rows


def recipe_or_tar(what: str | Path) -> tuple[str, Path | None]:
    """("recipe", None) for a recipe's name, ("tar", path) for a tar file's path or the tag of
    an image in the image cache (REPOSITORY:HASH12, what `install!` built)."""
    from images.build import cached_image

    text = str(what)
    if re.fullmatch(r"[a-z0-9][a-z0-9._/-]*:[0-9a-f]{12}", text):
        built = cached_image(text)
        if built is None:
            raise CloudError(
                f"no image {text} in the image cache",
                code="bad-image",
                hint="give the recipe's name or the repository (install! builds it again)",
            )
        return "tar", built.tar
    path = Path(text).expanduser()
    if text.endswith(".tar") or "/" in text or path.is_file():
        return "tar", path
    return "recipe", None
