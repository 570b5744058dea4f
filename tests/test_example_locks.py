"""The example's lock endpoints in one process: grants with fencing tokens, 409 on timeout
and on a stale token, and bad input refused with 400 and nothing changed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from catga_sync.config import ClusterConfig
from catga_sync.web.extension import CatgaCluster
from example_flask import create_app

WAIT = 10.0


@pytest.fixture
def client() -> Iterator[FlaskClient]:
    app: Flask = create_app(
        ClusterConfig(local_node_endpoint="http://localhost:7435", node_id="solo"),
        EXAMPLE_BACKGROUND=False,
    )
    node = CatgaCluster.state_of(app).node
    try:
        node.wait_for(lambda s: s.is_leader and s.commit_term == s.term, WAIT)
        yield app.test_client()
    finally:
        node.stop()


def everything(client: FlaskClient) -> tuple[Any, int]:
    node = CatgaCluster.state_of(client.application).node
    node.wait_for(lambda s: s.last_applied >= s.commit_index, WAIT)
    from catga_sync.locks import LockTable

    return node.state(LockTable).local.held(), node.status.commit_index


def test_acquire_release_and_tokens_that_only_grow(client: FlaskClient) -> None:
    first = client.post("/locks/report", json={"ttl": 5, "owner": "worker-1"})
    assert first.status_code == 200, first.get_json()
    grant = first.get_json()
    assert set(grant) == {"token", "owner", "expires_in"}
    assert grant["owner"] == "worker-1" and 0 < grant["expires_in"] <= 5
    held = client.get("/locks/report").get_json()
    assert held["token"] == grant["token"] and held["owner"] == "worker-1"
    busy = client.post("/locks/report", json={"ttl": 5, "wait": 0.2, "owner": "worker-2"})
    assert busy.status_code == 409
    assert busy.get_json()["error"] == "lock_not_acquired"
    assert client.delete("/locks/report", json={"token": grant["token"]}).status_code == 200
    assert client.get("/locks/report").status_code == 404
    again = client.delete("/locks/report", json={"token": grant["token"]})  # double release
    assert again.status_code == 409 and again.get_json()["error"] == "lock_not_held"
    second = client.post("/locks/report", json={"ttl": 5, "owner": "worker-2"}).get_json()
    assert second["token"] > grant["token"]
    stale = client.delete("/locks/report", json={"token": grant["token"]})  # an older token
    assert stale.status_code == 409
    assert client.get("/locks/report").get_json()["token"] == second["token"]


def test_a_lock_taken_over_http_frees_itself_after_its_ttl(client: FlaskClient) -> None:
    started = time.monotonic()  # before the grant: its TTL counts from when it was applied
    grant = client.post("/locks/short", json={"ttl": 0.3}).get_json()
    waited = client.post("/locks/short", json={"ttl": 5, "wait": 5, "owner": "next"})
    assert waited.status_code == 200, waited.get_json()
    assert waited.get_json()["token"] > grant["token"]
    # Not before the TTL ran out (on the leader, in this process), and soon after it.
    assert 0.3 <= time.monotonic() - started < 3.0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/locks/x", {"ttl": 0}),
        ("/locks/x", {"ttl": -1}),
        ("/locks/x", {"ttl": 10**9}),
        ("/locks/x", {"ttl": "10"}),
        ("/locks/x", {"ttl": True}),
        ("/locks/x", {"wait": -1}),
        ("/locks/x", {"owner": ""}),
        ("/locks/x", {"owner": "a\x00b"}),
        ("/locks/x", {"colour": "red"}),
        ("/locks/x", [1, 2]),
        ("/locks/" + "n" * 300, {"ttl": 5}),
        ("/locks/a%00b", {"ttl": 5}),
    ],
)
def test_bad_lock_requests_are_400_and_change_nothing(
    client: FlaskClient, path: str, body: Any
) -> None:
    before = everything(client)
    response = client.post(path, json=body)
    assert response.status_code == 400, response.get_json()
    assert set(response.get_json()) == {"error", "message"}
    assert everything(client) == before


@pytest.mark.parametrize("raw", [b'{"ttl": NaN}', b'{"ttl": Infinity}', b"not json"])
def test_non_json_numbers_are_400(client: FlaskClient, raw: bytes) -> None:
    before = everything(client)
    response = client.post("/locks/x", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert everything(client) == before


@pytest.mark.parametrize("body", [{"token": 0}, {"token": "1"}, {"token": 1.5}, {}])
def test_a_release_with_a_bad_token_is_400(client: FlaskClient, body: Any) -> None:
    grant = client.post("/locks/y", json={"ttl": 5}).get_json()
    before = everything(client)
    assert client.delete("/locks/y", json=body).status_code == 400
    assert everything(client) == before
    assert client.get("/locks/y").get_json()["token"] == grant["token"]
