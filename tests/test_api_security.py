"""Bad requests to a real agent: unsigned, forged, tampered, expired, replayed, wrong role,
malformed, and a bounded schemathesis fuzz of the OpenAPI document. Each gets a clear error,
nothing changes in the cloud, and the agent keeps answering."""

from __future__ import annotations

import json
import time

import asyncssh
import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from tests.helpers import agents_tls, sign_for, signed, wait_until
from tests.test_agent import api, docker_nodes, new_cloud, node_key, operator_key
from wire.signing import fingerprint, load_private_key

pytestmark = pytest.mark.cloud


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory):
    cloud = new_cloud(tmp_path_factory, 1)
    url = api(cloud, "node-1")
    wait_until(
        lambda: (
            httpx.get(url + "/v1/health", timeout=5, verify=agents_tls()).json()["state"]
            == "active"
        ),
        90,
        "the agent to be active",
    )
    yield cloud
    cloud.down(clean=True)


def cloud_state(cloud) -> tuple:
    nodes = docker_nodes(cloud, "node-1")
    services = cloud.docker("node-1", "service", "ls", "-q").stdout.split()
    return ({k: (v["role"], v["status"]) for k, v in nodes.items()}, sorted(services))


def check_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    assert body["message"] and isinstance(body["hint"], str)
    return body


def test_unsigned_request_is_refused(one) -> None:
    r = httpx.get(api(one, "node-1") + "/v1/nodes", timeout=10, verify=agents_tls())
    body = check_error(r, 401, "unsigned")
    assert "sign" in (body["message"] + body["hint"]).lower()


def test_unknown_key_and_bad_signature_get_identical_refusals_naming_no_key(one) -> None:
    """Nobody without a trusted key learns which keys the cloud trusts from the refusals."""
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    unknown = signed("GET", api(one, "node-1") + "/v1/nodes", stranger)
    headers = sign_for(api(one, "node-1"), stranger, "GET", "/v1/nodes", b"")
    headers["X-Hyops-Key"] = fingerprint(load_private_key(operator_key(one)))
    forged = httpx.get(
        api(one, "node-1") + "/v1/nodes", headers=headers, timeout=10, verify=agents_tls()
    )
    body = check_error(unknown, 401, "not-authenticated")
    assert check_error(forged, 401, "not-authenticated") == body
    assert "SHA256:" not in unknown.text + forged.text and "operator" not in body["message"]


def test_forged_signature_is_refused(one) -> None:
    """A stranger signs but names the operator's key."""
    url = api(one, "node-1") + "/v1/nodes/node-1/demote"
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    headers = sign_for(api(one, "node-1"), stranger, "POST", "/v1/nodes/node-1/demote", b"")
    real = sign_for(
        api(one, "node-1"),
        load_private_key(operator_key(one)),
        "POST",
        "/v1/nodes/node-1/demote",
        b"",
    )
    headers["X-Hyops-Key"] = real["X-Hyops-Key"]
    before = cloud_state(one)
    check_error(
        httpx.post(url, headers=headers, timeout=10, verify=agents_tls()), 401, "not-authenticated"
    )
    assert cloud_state(one) == before


def test_tampered_path_and_body_are_refused(one) -> None:
    key = load_private_key(operator_key(one))
    base = api(one, "node-1")
    headers = sign_for(api(one, "node-1"), key, "GET", "/v1/services", b"")
    r = httpx.get(base + "/v1/nodes", headers=headers, timeout=10, verify=agents_tls())
    check_error(r, 401, "not-authenticated")
    body = json.dumps({"labels": {"a": "1"}}).encode()
    headers = sign_for(api(one, "node-1"), key, "POST", "/v1/nodes/node-1/labels", body)
    headers["Content-Type"] = "application/json"
    tampered = json.dumps({"labels": {"a": "2"}}).encode()
    r = httpx.post(
        base + "/v1/nodes/node-1/labels",
        content=tampered,
        headers=headers,
        timeout=10,
        verify=agents_tls(),
    )
    check_error(r, 401, "not-authenticated")


@pytest.mark.parametrize("skew", [-600, 600])
def test_expired_or_future_requests_are_refused(one, skew: int) -> None:
    r = signed("GET", api(one, "node-1") + "/v1/nodes", operator_key(one), now=time.time() + skew)
    check_error(r, 401, "expired")


def test_replayed_request_is_refused(one) -> None:
    key = load_private_key(operator_key(one))
    headers = sign_for(api(one, "node-1"), key, "GET", "/v1/nodes", b"")
    url = api(one, "node-1") + "/v1/nodes"
    assert httpx.get(url, headers=headers, timeout=10, verify=agents_tls()).status_code == 200
    check_error(httpx.get(url, headers=headers, timeout=10, verify=agents_tls()), 401, "replayed")


def test_a_control_request_replayed_after_the_agent_crashed_and_restarted_is_refused(one) -> None:
    key = load_private_key(operator_key(one))
    path = "/v1/nodes/node-1/labels"
    body = json.dumps({"labels": {"replay-check": "first"}}).encode()
    headers = sign_for(api(one, "node-1"), key, "POST", path, body) | {
        "content-type": "application/json"
    }
    url = api(one, "node-1") + path
    assert (
        httpx.post(url, content=body, headers=headers, timeout=10, verify=agents_tls()).status_code
        == 200
    )
    one.docker("node-1", "node", "update", "--label-add", "replay-check=second", "node-1")
    one.kill_agent("node-1")  # SIGKILL: nothing is saved on the way out
    one.start_agent("node-1")
    wait_until(
        lambda: (
            httpx.get(api(one, "node-1") + "/v1/health", timeout=5, verify=agents_tls()).json()[
                "state"
            ]
            == "active"
        ),
        90,
        "the restarted agent to be active",
    )
    check_error(
        httpx.post(url, content=body, headers=headers, timeout=10, verify=agents_tls()),
        401,
        "replayed",
    )
    shown = one.docker("node-1", "node", "inspect", "-f", "{{json .Spec.Labels}}", "node-1")
    assert json.loads(shown.stdout)["replay-check"] == "second"  # the replay changed nothing


def test_node_key_may_not_promote_and_operator_key_may_not_take_a_join_token(one) -> None:
    base = api(one, "node-1")
    before = cloud_state(one)
    r = signed("POST", base + "/v1/nodes/node-1/demote", node_key(one))
    body = check_error(r, 403, "wrong-role")
    assert "operator" in body["message"] + body["hint"]
    r = signed("POST", base + "/v1/join-token", operator_key(one), {"role": "worker"})
    check_error(r, 403, "wrong-role")
    assert "SWMTKN" not in r.text
    assert cloud_state(one) == before


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/nodes/node-1/promote", None),
        ("POST", "/v1/nodes/node-1/availability", {"availability": "drain"}),
        ("PUT", "/v1/spec", {"managers": {"maximum": 1}}),
        ("POST", "/v1/services", {"name": "x", "definition": {"image": "local/busybox:1"}}),
        ("PUT", "/v1/stacks/x", {"services": {"x_a": {"image": "local/busybox:1"}}}),
        ("POST", "/v1/secrets", {"name": "s", "data": "eA=="}),
        ("DELETE", "/v1/nodes/node-1", None),
    ],
)
def test_control_routes_refuse_node_keys_and_unsigned_callers(
    one, method: str, path: str, body
) -> None:
    base = api(one, "node-1")
    before = cloud_state(one)
    r = signed(method, base + path, node_key(one), body)
    check_error(r, 403, "wrong-role")
    r = httpx.request(method, base + path, json=body, timeout=10, verify=agents_tls())
    check_error(r, 401, "unsigned")
    assert cloud_state(one) == before


def test_node_keys_read_the_spec_without_env_values_and_may_not_read_logs(one) -> None:
    """Least privilege on reads: a node key (on every machine) sees the systems' env names
    only; the operator sees the values. Container logs are the operator's alone."""
    base = api(one, "node-1")
    spec = {  # min_nodes above this one-node cloud: the system is never started
        "systems": {
            "vault": {
                "image": "local/busybox:1",
                "min_nodes": 9,
                "env": {"DB_PASSWORD": "s3cr3t-x"},
            }
        }
    }
    assert signed("PUT", base + "/v1/spec", operator_key(one), spec).status_code == 200
    as_node = signed("GET", base + "/v1/spec", node_key(one))
    assert as_node.status_code == 200, as_node.text
    assert as_node.json()["systems"]["vault"]["env"] == {"DB_PASSWORD": "(hidden)"}
    assert "s3cr3t-x" not in as_node.text
    as_operator = signed("GET", base + "/v1/spec", operator_key(one)).json()
    assert as_operator["systems"]["vault"]["env"] == {"DB_PASSWORD": "s3cr3t-x"}
    body = check_error(signed("GET", base + "/v1/logs?tail=1", node_key(one)), 403, "wrong-role")
    assert "operator" in body["message"]
    assert signed("GET", base + "/v1/logs?tail=1", operator_key(one)).status_code == 200


def test_node_key_gets_a_join_token(one) -> None:
    r = signed("POST", api(one, "node-1") + "/v1/join-token", node_key(one), {"role": "worker"})
    assert r.status_code == 200, r.text
    assert r.json()["token"].startswith("SWMTKN-")
    assert r.json()["managers"]


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"labels": "x"}', b'{"labels": {"a": 1}}', b"[]"],
)
def test_malformed_bodies_get_a_clear_400(one, body: bytes) -> None:
    key = load_private_key(operator_key(one))
    headers = sign_for(api(one, "node-1"), key, "POST", "/v1/nodes/node-1/labels", body)
    headers["Content-Type"] = "application/json"
    before = cloud_state(one)
    r = httpx.post(
        api(one, "node-1") + "/v1/nodes/node-1/labels",
        content=body,
        headers=headers,
        timeout=10,
        verify=agents_tls(),
    )
    err = check_error(r, 400, "bad-request")
    assert "labels" in err["message"] or "JSON" in err["message"] or "body" in err["message"]
    assert cloud_state(one) == before


def test_bad_since_is_explained(one) -> None:
    r = signed("GET", api(one, "node-1") + "/v1/logs?since=yesterday", operator_key(one))
    err = check_error(r, 400, "bad-request")
    assert "10m" in err["message"]


def test_every_route_documents_the_error_answers_it_may_give(one) -> None:
    # added to the document when it is first asked for, not built per route at the agent's
    # start (decision 0032): the document still says them, twice in a row
    from node.api import ERRORS

    for _ in range(2):
        doc = httpx.get(api(one, "node-1") + "/openapi.json", timeout=10, verify=agents_tls())
        operations = [op for path in doc.json()["paths"].values() for op in path.values()]
        assert len(operations) > 30
        for op in operations:
            for code in ERRORS:
                answer = op["responses"][str(code)]
                assert answer["description"] == ERRORS[code]["description"], (op, code)
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (op, code)


def test_fuzzing_the_openapi_document_never_breaks_the_agent(one) -> None:
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.core import NotSet

    base = api(one, "node-1")
    # fetched with requests: its `verify` takes the CA file (the cloud's, and only it)
    schema = schemathesis.openapi.from_url(base + "/openapi.json", verify=one.record["tls_ca"])
    key = load_private_key(operator_key(one))
    before = cloud_state(one)
    seen: dict[int, int] = {}
    client = httpx.Client(timeout=15, verify=agents_tls())

    def encode(body) -> bytes | None:
        if isinstance(body, NotSet):
            return None
        if isinstance(body, bytes):  # negative cases include raw, non-JSON bodies
            return body
        return json.dumps(body, default=str).encode()

    def send(case) -> None:
        query = dict(case.query or {})
        if str(query.get("follow", "")).lower() in ("true", "1"):
            query["follow"] = "false"  # a followed log never ends; the fuzz must
        if case.formatted_path == "/v1/watch":
            query["seconds"] = "0"  # nor does a watch: its snapshot is enough
        request = client.build_request(
            case.method,
            base + case.formatted_path,
            params=query or None,
            content=encode(case.body),
        )
        path = request.url.raw_path.decode()
        headers = sign_for(api(one, "node-1"), key, case.method, path, request.content or b"")
        request.headers.update(headers)
        request.headers["Content-Type"] = "application/json"
        response = client.send(request)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, f"{case.method} {path}: {response.text}"
        if response.status_code >= 400:
            assert set(response.json()) >= {"error", "message", "hint"}

    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        strategy = schema.as_strategy(generation_mode=mode)

        @given(case=strategy)
        @settings(
            max_examples=120,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case) -> None:
            if case.formatted_path.endswith("/demote") or case.formatted_path.endswith("/promote"):
                # fuzzed names are random; the one real node must keep its role
                if case.formatted_path.split("/")[3] in ("node-1",):
                    return
            send(case)

        fuzz()
    client.close()
    assert sum(seen.values()) > 50
    assert cloud_state(one) == before
    assert httpx.get(base + "/v1/health", timeout=5, verify=agents_tls()).json()["ok"] is True
