"""The node API's `/v1/nodes` against the Engine API's own `/nodes` on the same manager.

Starts a 3-node local cloud in a temporary workspace, then alternates the two requests (each over
a kept-alive connection: httpx to the agent over the bridge, httpx to dockerd over its unix
socket) and prints both medians and the ratio. Aim: at most 1.0x (the agent answers from its
live model, node/model.py; the client's signing is counted on our side).
Run: .venv/bin/python bench/api_nodes.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from localcloud.cloud import LocalCloud  # noqa: E402
from wire.ports import HEADER_MODEL_AGE as MODEL_AGE  # noqa: E402
from wire.ports import MANAGERS  # noqa: E402
from wire.signing import audience, load_signing_key, sign_headers  # noqa: E402

ROUNDS = int(os.environ.get("HYOPS_BENCH_ROUNDS") or 200)


def cpu_seconds(pid: int | None) -> float:
    """User and system CPU seconds process `pid` has used so far (0 when unknown)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hyops-bench-") as tmp:
        workspace = Path(tmp)
        (workspace / "ops").symlink_to(REPO / "ops")
        cloud = LocalCloud(workspace / ".hyops", name="bench")
        try:
            cloud.up(nodes=3)
            record = tomllib.loads(cloud.record_path.read_text())
            key = load_signing_key(Path(record["operator_key"]))  # as the workspace signs
            # the agents serve HTTPS with certificates the cloud's CA issued (a cloud recorded
            # before TLS: plain HTTP, and the context goes unused)
            tls = cloud.tls_context() if hasattr(cloud, "tls_context") else True
            deadline = time.monotonic() + 120
            manager = None
            while manager is None and time.monotonic() < deadline:
                for node in record["node"]:
                    health = httpx.get(node["api"] + "/v1/health", timeout=5, verify=tls).json()
                    info = cloud.docker(
                        node["name"], "info", "--format", "{{.Swarm.ControlAvailable}}"
                    )
                    if health["state"] == "active" and info.stdout.strip() == "true":
                        manager = node
                        break
                else:
                    time.sleep(0.5)
            if manager is None:
                print("no manager became active in 120 s", file=sys.stderr)
                return 1
            agent = httpx.Client(base_url=manager["api"], verify=tls)
            to = audience(health["cloud_id"], MANAGERS)  # what the workspace signs (nodes) for
            engine = httpx.Client(
                transport=httpx.HTTPTransport(uds=manager["docker_socket"]),
                base_url="http://docker",
            )
            # answered from the agent's live model once it is fed (node/model.py)
            fed = False
            while not fed and time.monotonic() < deadline:
                headers = sign_headers(key, "GET", "/v1/nodes", b"", audience=to)
                fed = MODEL_AGE in agent.get("/v1/nodes", headers=headers).headers
            ours, theirs, from_model = [], [], 0
            agent_pid = cloud._agent_pid(manager["name"])
            dockerd_pid = cloud._dockerd_pid(manager["name"])
            cpu = {"agent": -cpu_seconds(agent_pid), "dockerd": -cpu_seconds(dockerd_pid)}
            client_cpu = {"ours": 0.0, "theirs": 0.0}  # this process's CPU: signing, TLS, httpx
            for _ in range(ROUNDS):
                t, c = time.perf_counter(), time.process_time()
                r = agent.get(
                    "/v1/nodes", headers=sign_headers(key, "GET", "/v1/nodes", b"", audience=to)
                )
                ours.append(time.perf_counter() - t)
                client_cpu["ours"] += time.process_time() - c
                assert r.status_code == 200, r.text
                from_model += MODEL_AGE in r.headers
                t, c = time.perf_counter(), time.process_time()
                r = engine.get("/v1.41/nodes")
                theirs.append(time.perf_counter() - t)
                client_cpu["theirs"] += time.process_time() - c
                assert r.status_code == 200, r.text
            cpu = {
                "agent": cpu["agent"] + cpu_seconds(agent_pid),
                "dockerd": cpu["dockerd"] + cpu_seconds(dockerd_pid),
            }
            a, b = statistics.median(ours), statistics.median(theirs)
            print(f"node API GET /v1/nodes    median {a * 1000:.2f} ms over {ROUNDS} requests")
            print(f"Engine API GET /nodes     median {b * 1000:.2f} ms over {ROUNDS} requests")
            print(f"ratio (ours / engine)     {a / b:.2f}x   (aim: at most 1.0x)")
            print(f"answered from the live model: {from_model} of {ROUNDS}")
            print(
                f"CPU per request: agent {cpu['agent'] / ROUNDS * 1000:.2f} ms, dockerd "
                f"{cpu['dockerd'] / ROUNDS * 1000:.2f} ms (what each process spent, all of it)"
            )
            print(
                f"client CPU per request: ours {client_cpu['ours'] / ROUNDS * 1000:.2f} ms "
                f"(signing, TLS), the engine's {client_cpu['theirs'] / ROUNDS * 1000:.2f} ms"
            )
            print("load average", " ".join(f"{x:.2f}" for x in os.getloadavg()))
        finally:
            cloud.down(clean=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
