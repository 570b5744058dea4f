"""The example's leader-only work, in one process: the OutboxProcessor marks created orders
processed under the leader's fencing token, the fenced outbox refuses an older token, and the
leader-gated report job records its reports through the log."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from helpers import poll

from catga_sync.config import ClusterConfig
from catga_sync.web.extension import CatgaCluster
from example_flask import create_app
from example_flask.orders import Orders, StaleFencingToken

WAIT = 10.0


def eventually(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    return poll(predicate, timeout, what, interval=0.02)


@pytest.fixture
def app() -> Iterator[Flask]:
    app = create_app(
        ClusterConfig(local_node_endpoint="http://localhost:7433", node_id="solo"),
        EXAMPLE_OUTBOX_INTERVAL=0.05,
        EXAMPLE_REPORT_SECONDS=0.2,
    )
    node = CatgaCluster.state_of(app).node
    try:
        node.wait_for(lambda s: s.is_leader and s.commit_term == s.term, WAIT)
        yield app
    finally:
        node.stop()


def test_the_outbox_processor_marks_orders_under_the_leaders_token(app: Flask) -> None:
    client: FlaskClient = app.test_client()
    ids = [
        client.post("/orders", json={"customer": f"c{k}", "amount": 1}).get_json()["id"]
        for k in range(3)
    ]
    term = client.get("/cluster").get_json()["term"]

    def all_processed() -> Any:
        outbox = client.get("/outbox").get_json()
        done = {p["order_id"]: p["fencing_token"] for p in outbox["processed"]}
        return outbox if set(ids) <= set(done) else None

    outbox = eventually(all_processed, "the outbox to process every order")
    assert outbox["pending"] == []
    assert outbox["fence"] == term
    assert {p["fencing_token"] for p in outbox["processed"]} == {term}
    # The orders themselves are untouched: status and version belong to the clients.
    assert client.get(f"/orders/{ids[0]}").get_json()["version"] == 1
    (task,) = client.get("/cluster").get_json()["singleton_tasks"]
    assert task["name"] == "OutboxProcessor"
    assert task["state"] == "running"
    assert task["fencing_token"] == term


def test_the_outbox_refuses_a_token_older_than_one_it_accepted(app: Flask) -> None:
    client = app.test_client()
    order_id = client.post("/orders", json={"customer": "ada", "amount": 1}).get_json()["id"]
    node = CatgaCluster.state_of(app).node
    orders = node.state(Orders)
    term = node.status.term
    eventually(lambda: client.get("/outbox").get_json()["fence"] == term, "a fenced write")
    before = client.get("/outbox").get_json()
    with pytest.raises(StaleFencingToken, match="older than"):
        orders.mark_processed(order_id, term - 1)
    assert client.get("/outbox").get_json() == before


def test_the_report_job_runs_on_the_leader_and_records_its_report(app: Flask) -> None:
    client = app.test_client()
    client.post("/orders", json={"customer": "ada", "amount": 1})

    def report_after_the_order() -> Any:
        # A run may have fired before the order was created: wait for one after it.
        response = client.get("/report")
        if response.status_code != 200:
            return None
        body = response.get_json()
        return body if body["counts"] == {"created": 1} else None

    report = eventually(report_after_the_order, "a report that counts the order")
    assert report["fencing_token"] == client.get("/cluster").get_json()["term"]
    jobs = client.get("/cluster").get_json()["singleton_jobs"]
    assert [job["id"] for job in jobs] == ["orders.report"]
