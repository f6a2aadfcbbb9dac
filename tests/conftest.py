"""Fixtures shared by the tests: real local clouds of namespaced dockerd nodes.

`make_cloud(nodes=3, agents=True, resources=None)` returns a started `LocalCloud` in its own
temporary workspace. Each workspace path is unique, so each cloud gets its own prefix and a
subnet no other interface uses: parallel runs never collide. Every cloud made is stopped with
`down(clean=True)` when its scope ends, also when the test failed; the nodes' logs are copied to
the workspace first (pytest keeps the last runs' temporary folders) so a failure can be read.
At the start of a session, leftovers of dead runs (namespaces, bridges, run folders where no
process lives any more) are removed. Cloud tests need root, like CI.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from localcloud.cloud import LocalCloud
from localcloud.network import cleanup_stale
from tests.helpers import trust_cloud

REPO = Path(__file__).resolve().parent.parent

MakeCloud = Callable[..., LocalCloud]

# `hyops eval` run by tests evaluates in-process and starts no warm process (repl/warm.py) that
# would outlive the test; tests/test_warm.py turns it on for its own workspaces
os.environ.setdefault("HYOPS_WARM", "0")


@pytest.fixture(scope="session")
def stale_clouds_removed() -> list[str]:
    """Remove local-cloud leftovers of dead test runs (nothing alive, no lock held)."""
    return cleanup_stale("hy????")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _keep_logs(cloud: LocalCloud) -> None:
    nodes = cloud.cloud_dir / "nodes"
    if not nodes.is_dir():
        return
    keep = cloud.state_dir.parent / "logs-after-down"
    for log in nodes.glob("*/*.log"):
        target = keep / log.parent.name / log.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, target)


class _Clouds:
    """Makes clouds for one fixture scope and takes every one of them down at its end."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp = tmp_path_factory
        self.made: list[LocalCloud] = []

    def make(
        self,
        nodes: int = 3,
        agents: bool = True,
        resources: dict[str, tuple[float | None, int | None]] | None = None,
        name: str = "local",
        timeout: float = 180,
        spec: dict[str, Any] | None = None,
        clock_faults: bool = False,
    ) -> LocalCloud:
        workspace = self.tmp.mktemp("ws")
        (workspace / "ops").symlink_to(REPO / "ops")
        cloud = LocalCloud(workspace / ".hyops", name)
        self.made.append(cloud)  # before up: a half-made cloud is taken down too
        cloud.up(
            nodes=nodes,
            resources=resources,
            agents=agents,
            timeout=timeout,
            spec=spec,
            clock_faults=clock_faults,
        )
        return trust_cloud(cloud)  # its agents' certificates are checked against its CA

    def close(self) -> None:
        errors = []
        for cloud in reversed(self.made):
            try:
                _keep_logs(cloud)
                cloud.down(clean=True)
            except Exception as exc:  # take the others down before reporting
                errors.append(f"{cloud}: {exc}")
        if errors:
            raise RuntimeError("local clouds not taken down: " + "; ".join(errors))


@pytest.fixture
def make_cloud(
    tmp_path_factory: pytest.TempPathFactory, stale_clouds_removed: list[str]
) -> Iterator[MakeCloud]:
    """A factory of started local clouds, taken down at the end of the test."""
    clouds = _Clouds(tmp_path_factory)
    yield clouds.make
    clouds.close()


@pytest.fixture(scope="module")
def make_module_cloud(
    tmp_path_factory: pytest.TempPathFactory, stale_clouds_removed: list[str]
) -> Iterator[MakeCloud]:
    """Like `make_cloud`, shared by a module's tests and taken down after the last one."""
    clouds = _Clouds(tmp_path_factory)
    yield clouds.make
    clouds.close()
