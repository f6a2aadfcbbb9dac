"""Systems from repositories, without a cloud: a repository's image recipe read and checked
(repl/catalogue.py), and the check every node makes of an image tar before loading it
(wire/images.py). Real git repositories and real tars; the install itself runs on a local cloud
in tests/test_services.py."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from repl.catalogue import CatalogueError, read_offer
from wire.images import ImageTarError, check_image_tar

SYSTEM = '[system]\ncommand = "sleep 1000"\n'
RECIPE = (
    'name = "acme/web"\nsuite = "bookworm"\nvariant = "extract"\npackages = ["busybox-static"]\n'
    '[files]\n"/srv/index.html" = "site/index.html"\n'
)


def repo(path: Path, files: dict[str, str]) -> str:
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "x"]):
        subprocess.run(
            ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            check=True,
            capture_output=True,
        )
    return f"git+file://{path}"


def test_a_repositorys_recipe_is_found_checked_and_names_the_image(tmp_path: Path) -> None:
    url = repo(
        tmp_path / "web",
        {"hyops-system.toml": SYSTEM, "hyops-image.toml": RECIPE, "site/index.html": "hi"},
    )
    offer = read_offer(url)
    assert (offer["image"], offer["recipe"]) == ("acme/web", "hyops-image.toml")
    # a recipe elsewhere, named by `recipe =`
    url = repo(
        tmp_path / "other",
        {
            "hyops-system.toml": 'recipe = "images/web.toml"\n' + SYSTEM,
            "images/web.toml": RECIPE,
            "site/index.html": "hi",
        },
    )
    assert read_offer(url)["recipe"] == "images/web.toml"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"hyops-system.toml": 'recipe = "Dockerfile"\n' + SYSTEM, "Dockerfile": "FROM x\n"},
            "not a Dockerfile",
        ),
        ({"hyops-system.toml": 'recipe = "../x.toml"\n' + SYSTEM}, "a path inside the repository"),
        ({"hyops-system.toml": 'recipe = "nope.toml"\n' + SYSTEM}, "no such file"),
        (
            {"hyops-system.toml": SYSTEM, "hyops-image.toml": RECIPE},
            "no file site/index.html",
        ),
        (
            {
                "hyops-system.toml": '[system]\nimage = "other/image:1"\n',
                "hyops-image.toml": RECIPE,
                "site/index.html": "hi",
            },
            r"is not the recipe.s \(acme/web\)",
        ),
        ({"hyops-system.toml": SYSTEM}, "image"),  # no recipe and no image
    ],
)
def test_a_bad_recipe_is_refused_with_what_to_do(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    url = repo(tmp_path / "r", files)
    with pytest.raises(CatalogueError, match=message):
        read_offer(url)


def image_tar(path: Path, files: dict[str, bytes], *, images: int = 1) -> str:
    """A `docker load` tar of one layer holding `files` (several manifest entries with
    `images`); returns the image's ID."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    layer_bytes = layer.getvalue()
    diff = hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff}"]}}).encode()
    cid = hashlib.sha256(config).hexdigest()
    entry = {"Config": f"{cid}.json", "RepoTags": ["acme/web:1"], "Layers": [f"{diff}/layer.tar"]}
    with tarfile.open(path, "w") as t:
        for name, data in (
            (f"{diff}/layer.tar", layer_bytes),
            (f"{cid}.json", config),
            ("manifest.json", json.dumps([entry] * images).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return f"sha256:{cid}"


def test_an_image_tar_is_taken_only_whole_and_as_named(tmp_path: Path) -> None:
    good = tmp_path / "good.tar"
    image_id = image_tar(good, {"etc/motd": b"hello\n"})
    assert check_image_tar(good, image_id) == ["acme/web:1"]

    with pytest.raises(ImageTarError, match="not sha256:000000000000"):
        check_image_tar(good, "sha256:" + "0" * 64)
    with pytest.raises(ImageTarError, match="is not an image ID"):
        check_image_tar(good, "latest")

    two = tmp_path / "two.tar"
    with pytest.raises(ImageTarError, match="lists 2 images"):
        check_image_tar(two, image_tar(two, {"a": b"x"}, images=2))

    # the layer changed, the manifest and config kept: refused
    changed = tmp_path / "changed.tar"
    image_tar(changed, {"etc/motd": b"owned\n"})
    with (
        tarfile.open(changed) as src,
        tarfile.open(good) as orig,
        tarfile.open(tmp_path / "mixed.tar", "w") as out,
    ):
        layer = next(m for m in src if m.name.endswith("layer.tar"))
        for member in orig:
            source = src if member.name.endswith("layer.tar") else orig
            m = layer if member.name.endswith("layer.tar") else member
            m.name = member.name
            out.addfile(m, source.extractfile(m))
    with pytest.raises(ImageTarError, match="the tar was changed"):
        check_image_tar(tmp_path / "mixed.tar", image_id)

    not_tar = tmp_path / "not.tar"
    not_tar.write_bytes(b"\x00" * 10 + b"garbage" * 100)
    with pytest.raises(ImageTarError):
        check_image_tar(not_tar, image_id)
