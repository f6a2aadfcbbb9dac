"""Image tars carried to the nodes (`POST /v1/images`, docs/protocol.md section 4): the check
both sides make of a `docker load` tar before any engine sees it.

A tar is taken only when it holds exactly one image whose ID is the one the operator named
(the sha256 of its config) and every layer is the one that config lists (the sha256 of the
layer's uncompressed content is its diff_id). So a tar changed on disk or on the way is refused
whole, before anything is loaded. Pure: reads the file, touches no engine and no network.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import tarfile
from pathlib import Path
from typing import IO, Any

__all__ = [
    "IMAGES_ROUTE",
    "MAX_IMAGE",
    "ImageTarError",
    "check_image_tar",
    "file_sha256",
    "image_id_ok",
]

IMAGES_ROUTE = "/v1/images"
# The largest image tar an agent takes (the node image is ~500 MB); streamed to disk, never held.
MAX_IMAGE = 4 * 1024 * 1024 * 1024
CHUNK = 1 << 20
MAX_CONFIG = 16 * CHUNK  # an image's config is a few KB of JSON
_ID = re.compile(r"sha256:[0-9a-f]{64}")
_TAG = re.compile(r"[a-z0-9]+(?:[._/-][a-z0-9]+)*(?::\d+)?(?:/[a-z0-9._-]+)*:[A-Za-z0-9_.-]{1,128}")


class ImageTarError(ValueError):
    """A tar that is not the one image it claims to be; the message says what is wrong."""


def image_id_ok(image_id: str) -> bool:
    """Whether `image_id` has the shape of an image ID (`sha256:` and 64 hex)."""
    return bool(_ID.fullmatch(image_id))


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of a file, read in chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _digest(stream: IO[bytes]) -> str:
    h = hashlib.sha256()
    while chunk := stream.read(CHUNK):
        h.update(chunk)
    return h.hexdigest()


def _layer_diff_id(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    """sha256 of a layer's uncompressed content (its diff_id), gzip or plain."""
    f = tar.extractfile(member)
    if f is None:
        raise ImageTarError(f"layer {member.name} is not a file")
    head = f.read(2)
    f.seek(0)
    if head == b"\x1f\x8b":
        with gzip.GzipFile(fileobj=f) as g:
            return "sha256:" + _digest(g)
    return "sha256:" + _digest(f)


def check_image_tar(path: Path, image_id: str) -> list[str]:
    """The tags of the one image in the `docker load` tar at `path`, whose ID must be
    `image_id`; ImageTarError saying what is wrong otherwise (then nothing may be loaded)."""
    if not image_id_ok(image_id):
        raise ImageTarError(f"{image_id!r} is not an image ID (sha256: and 64 hex digits)")
    try:
        with tarfile.open(path, "r:") as tar:
            members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
            for name, member in members.items():
                if name.startswith("/") or ".." in name.split("/"):
                    raise ImageTarError(f"the tar has a member outside it: {name!r}")
                if member.issym() or member.islnk():
                    raise ImageTarError(f"the tar has a link, {name!r}: an image tar has none")
            manifest_member = members.get("manifest.json")
            if manifest_member is None or not manifest_member.isfile():
                raise ImageTarError("no manifest.json: not a tar `docker save` or hyops writes")
            manifest_file = tar.extractfile(manifest_member)
            assert manifest_file is not None
            manifest: Any = json.loads(manifest_file.read(CHUNK))
            if not isinstance(manifest, list) or len(manifest) != 1:
                count = len(manifest) if isinstance(manifest, list) else "no list of"
                raise ImageTarError(f"manifest.json lists {count} images; one is carried at a time")
            entry = manifest[0]
            config_name = str(entry.get("Config", "")) if isinstance(entry, dict) else ""
            config_member = members.get(config_name.removeprefix("./"))
            if config_member is None or not config_member.isfile():
                raise ImageTarError(f"manifest.json names a config {config_name!r} it lacks")
            if config_member.size > MAX_CONFIG:
                raise ImageTarError(f"the image's config is {config_member.size} bytes: not one")
            config_file = tar.extractfile(config_member)
            assert config_file is not None
            config_bytes = config_file.read()
            actual = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
            if actual != image_id:
                raise ImageTarError(
                    f"the tar's image is {actual[:19]}…, not {image_id[:19]}… as named: "
                    "a different or changed image"
                )
            config = json.loads(config_bytes)
            diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
            layers = entry.get("Layers") or []
            if not isinstance(layers, list) or len(layers) != len(diff_ids):
                raise ImageTarError(
                    f"manifest.json lists {len(layers)} layers, the image's config {len(diff_ids)}"
                )
            for layer_name, diff_id in zip(layers, diff_ids, strict=True):
                member = members.get(str(layer_name).removeprefix("./"))
                if member is None or not member.isfile():
                    raise ImageTarError(f"manifest.json names a layer {layer_name!r} it lacks")
                if _layer_diff_id(tar, member) != diff_id:
                    raise ImageTarError(
                        f"layer {layer_name} is not the one the image's config lists "
                        f"({str(diff_id)[:19]}…): the tar was changed"
                    )
            tags = entry.get("RepoTags") or []
            if not isinstance(tags, list) or not all(
                isinstance(t, str) and _TAG.fullmatch(t) for t in tags
            ):
                raise ImageTarError(f"manifest.json's RepoTags are not image tags: {tags!r}")
            return list(tags)
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
        raise ImageTarError(f"not a readable tar ({type(exc).__name__}: {exc})") from None
    except (ValueError, AttributeError) as exc:
        if isinstance(exc, ImageTarError):
            raise
        raise ImageTarError(
            f"manifest.json or the config is not what docker writes ({exc})"
        ) from None
