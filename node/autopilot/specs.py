"""Where the spec is kept: in Raft as a Swarm config (so any next leader has it) and in the
agent's data folder (so an agent keeps the spec it was given across restarts)."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

from node.autopilot.journal import Journal
from node.engine import Engine, EngineError
from node.errors import AgentError
from node.swarm import SwarmView
from wire.files import PRIVATE, write_atomic
from wire.spec import SpecError, check_spec, default_spec

__all__ = ["ENV_HIDDEN", "SPEC_LABEL", "SPEC_SEQ", "SpecStore", "spec_for_role"]

log = logging.getLogger("hyops.autopilot")

SPEC_LABEL = "hyops.spec"
SPEC_SEQ = "hyops.spec.seq"
ENV_HIDDEN = "(hidden)"  # what a node key sees instead of a system's env value


def spec_for_role(answer: dict[str, Any], role: str) -> dict[str, Any]:
    """The GET /v1/spec answer as a key of `role` may read it.

    Operators read all of it. Any other role (node keys, held by every machine of the cloud)
    reads the systems' `env` with each name kept and its value replaced by `ENV_HIDDEN`: env
    values are where passwords and API keys of a system go, and a node never needs them from
    the API (Swarm hands each container its own). The answer is copied, never changed."""
    if role == "operator":
        return answer
    systems = answer.get("systems")
    if not isinstance(systems, dict):
        return answer
    shown = {}
    for name, system in systems.items():
        env = system.get("env") if isinstance(system, dict) else None
        shown[name] = {**system, "env": dict.fromkeys(env, ENV_HIDDEN)} if env else system
    return {**answer, "systems": shown}


class SpecStore:
    """The spec one agent follows: `spec` is None until an operator gives one (then the
    autopilot only watches, so a cloud nobody asked to manage itself is left alone)."""

    def __init__(self, engine: Engine, swarm: SwarmView, path: Path, journal: Journal) -> None:
        self.engine = engine
        self.swarm = swarm
        self.path = path
        self.journal = journal
        self.spec: dict[str, Any] | None = self._load_local()

    def _load_local(self) -> dict[str, Any] | None:
        try:
            return check_spec(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, SpecError) as exc:
            log.warning("the kept spec %s cannot be used (%s): using the default", self.path, exc)
            return None

    def _save_local(self, spec: dict[str, Any]) -> None:
        write_atomic(self.path, json.dumps(spec, indent=1, sort_keys=True), PRIVATE)

    @property
    def version(self) -> str | None:
        return (self.spec or {}).get("version")

    async def _stored_configs(self) -> list[dict[str, Any]]:
        configs = await self.engine.configs({"label": [SPEC_LABEL]})
        return sorted(configs, key=lambda c: int(c["Spec"].get("Labels", {}).get(SPEC_SEQ, "0")))

    async def read_stored(self) -> dict[str, Any] | None:
        """The newest spec kept in Raft (a Swarm config), or None. Managers only."""
        configs = await self._stored_configs()
        if not configs:
            return None
        data = base64.b64decode(configs[-1]["Spec"].get("Data") or "")
        return check_spec(json.loads(data))

    async def apply(self, data: Any, by: str) -> dict[str, Any]:
        """Take a new spec (on a manager): check it whole, keep it in Raft and on disk.

        An invalid spec is refused whole (`AgentError` invalid-spec, every problem listed)."""
        try:
            spec = check_spec(data)
        except SpecError as exc:
            raise AgentError(
                "invalid",
                "invalid-spec",
                f"spec refused, nothing changed: {len(exc.problems)} problem(s): "
                + "; ".join(exc.problems),
                "fix every problem listed and apply again (docs/autopilot.md)",
            ) from None
        previous = self.version
        configs = await self._stored_configs()
        stored_version = None
        if configs:
            stored_version = configs[-1]["Spec"].get("Labels", {}).get(SPEC_LABEL)
        if stored_version != spec["version"]:
            seq = 1 + max(
                (int(c["Spec"].get("Labels", {}).get(SPEC_SEQ, "0")) for c in configs), default=0
            )
            body = {
                "Name": f"hyops-spec-{seq}-{spec['version']}",
                "Labels": {SPEC_LABEL: spec["version"], SPEC_SEQ: str(seq)},
                "Data": base64.b64encode(json.dumps(spec, sort_keys=True).encode()).decode(),
            }
            await self.engine.config_create(body, "keep the spec")
            for old in configs[:-1]:  # keep the one before, for a look back
                try:
                    await self.engine.config_remove(old["ID"], "drop old spec")
                except EngineError as exc:
                    log.warning("could not drop an old spec: %s", exc)
        self.spec = spec
        self._save_local(spec)
        changed = previous != spec["version"]
        self.journal.note(
            "spec",
            None,
            f"spec {spec['version']} applied by {by}",
            "done" if changed else "no change",
        )
        return {"version": spec["version"], "changed": changed, "previous": previous}

    async def current(self) -> dict[str, Any] | None:
        """The spec this cloud follows: Raft's copy when this node is a manager, else its own;
        None when none was ever given."""
        if await self.swarm.is_manager():
            stored = await self.read_stored()
            if stored is not None and stored["version"] != self.version:
                self.spec = stored
                self._save_local(stored)
        return self.spec

    async def answer(self) -> dict[str, Any]:
        """GET /v1/spec: the spec followed (`given` true), or the default one (`given` false)."""
        spec = await self.current()
        if spec is None:
            return {**default_spec(), "version": None, "given": False}
        return {**spec, "given": True}
