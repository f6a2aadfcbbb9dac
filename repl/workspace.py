"""Where the workspace is on disk, and where its machine-local state lives.

The workspace is a git repository with an `ops/` folder. `hyops` finds it from `$HYOPS_WORKSPACE`
or by walking up from the current folder. Machine-local state (recorded clouds, the operator's
key, history, the audit log) lives in `.hyops/`, which is git-ignored and kept mode 0700.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


class WorkspaceError(Exception):
    """No workspace could be found or prepared; the message says what to do."""


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def ops_dir(self) -> Path:
        return self.root / "ops"

    @property
    def notebooks_dir(self) -> Path:
        return self.root / "notebooks"

    @property
    def state_dir(self) -> Path:
        """Machine-local, secret-holding state: `.hyops/` (mode 0700)."""
        return self.root / ".hyops"

    @property
    def clouds_dir(self) -> Path:
        return self.state_dir / "clouds"

    @property
    def history_file(self) -> Path:
        return self.state_dir / "history"

    @property
    def audit_log(self) -> Path:
        return self.state_dir / "audit.jsonl"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def ensure_state_dir(self) -> Path:
        """Create `.hyops/` with mode 0700 if it is missing, and return it."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        return self.state_dir


def find_workspace(start: Path | None = None) -> Workspace:
    """The workspace for `start` (default: the current folder).

    `$HYOPS_WORKSPACE` wins when set; otherwise the nearest folder upwards that has an `ops/`
    folder is the workspace.
    """
    env = os.environ.get("HYOPS_WORKSPACE")
    if env:
        root = Path(env).expanduser().resolve()
        if not (root / "ops").is_dir():
            raise WorkspaceError(
                f"$HYOPS_WORKSPACE is {root}, which has no ops/ folder: "
                "point it at a hyops workspace (a clone of the hyops repository)"
            )
        return Workspace(root)
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "ops").is_dir():
            return Workspace(folder)
    raise WorkspaceError(
        f"no hyops workspace at or above {here}: run hyops inside a clone of the hyops "
        "repository (a folder with ops/), or set $HYOPS_WORKSPACE"
    )
