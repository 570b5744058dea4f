"""Forwarding to the leader across three real nodes over HTTP on loopback: the mediator's
ForwardToLeaderBehavior and LeaderOnlyBehavior, the forwarding endpoint (its wire format, its
refusals, exactly-once per idempotency key), and the Flask view decorators."""

from __future__ import annotations

import gzip
import http.client
import json
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

import pytest
import requests
from _peer_support import blackhole
from flask import Flask, Response, jsonify, request
from helpers import LocalCluster, free_ports

from catga_sync.config import ClusterConfig
from catga_sync.errors import (
    CatgaError,
    CommitTimeoutError,
    NoLeaderError,
    NotLeaderError,
    NotRegisteredError,
    UsageError,
)
from catga_sync.forwarding import (
    HEADER_HOP,
    ForwardToLeaderBehavior,
    HttpClusterForwarder,
    IdempotencyKeyReusedError,
    LeaderOnlyBehavior,
    LeaderUnreachableError,
    default_forwarder,
    guard_for,
)
from catga_sync.idempotency import IdempotencyTable
from catga_sync.mediator import Mediator
from catga_sync.node import ClusterNode
from catga_sync.storage import MemoryStorage
from catga_sync.transport.signing import signed_headers
from catga_sync.transport.wire import HEADER_SENDER
from catga_sync.web.extension import CatgaCluster
from catga_sync.web.worker_app import make_threaded_server

WAIT = 30.0
SECRET = "forwarding-tests-secret-0123456789"

# Every handler run, by the test's reference: which node ran it.
CALLS: dict[str, list[str]] = defaultdict(list)
CALLS_LOCK = threading.Lock()


def ran(ref: str, node_id: str) -> None:
    with CALLS_LOCK:
        CALLS[ref].append(node_id)


def calls(ref: str) -> list[str]:
    with CALLS_LOCK:
        return list(CALLS[ref])


class OrderRejected(ValueError):
    """A handler's own error type, which must come back across the hop as itself."""


@dataclass
class CreateOrder:
    ref: str
    customer: str
    amount: float


@dataclass
class WhoLeads:
    ref: str


def build_mediator(node_id: str) -> Mediator:
    """The same commands on every node; the handlers record which node ran them."""
    mediator = Mediator()
    mediator.register(CreateOrder, "create-order")
    mediator.register(WhoLeads, "who-leads")

    @mediator.handler(CreateOrder)
    def create_order(cmd: CreateOrder) -> dict[str, Any]:
        ran(cmd.ref, node_id)
        if cmd.amount <= 0:
            raise OrderRejected(f"amount must be positive, not {cmd.amount:g}")
        return {"customer": cmd.customer, "amount": cmd.amount, "node": node_id}

    @mediator.handler(WhoLeads)
    def who_leads(cmd: WhoLeads) -> str:
        ran(cmd.ref, node_id)
        return node_id

    return mediator


def new_ref() -> str:
    return uuid.uuid4().hex[:12]


# ================================================================================================
# A cluster of ClusterNodes serving their worker app (peer RPC + the forwarding endpoint)


def _with_behaviors(node: ClusterNode) -> None:
    mediator = node.mediator
    assert mediator is not None
    mediator.add_behavior(ForwardToLeaderBehavior(node.coordinator), for_=CreateOrder)
    mediator.add_behavior(LeaderOnlyBehavior(node.coordinator), for_=WhoLeads)


class Cluster(LocalCluster):
    """Three nodes over HTTP, each with the same mediator commands and behaviors. Its
    :meth:`leader` is the node that itself says it leads and has committed its term's no-op
    (asking a follower who leads may name a leader that has just handed over)."""

    def __init__(self, *, secret: str | None = None) -> None:
        super().__init__(
            3,
            transport="http",
            secret=secret,
            election_timeout=0.3,
            heartbeat_interval=0.1,
            node_options=lambda k: {"mediator": build_mediator(f"node{k}")},
            setup=_with_behaviors,
            committed_leader=True,
            wait=WAIT,
        )

    def mediator(self, node: ClusterNode) -> Mediator:
        assert node.mediator is not None
        return node.mediator

    def node_at(self, endpoint: str) -> ClusterNode:
        return next(n for n in self.nodes if n.raft_id == endpoint)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(secret=SECRET).start()
    try:
        yield c
    finally:
        c.stop()


SESSION = requests.Session()
SESSION.trust_env = False


def post_forward(
    endpoint: str,
    body: bytes | dict[str, Any],
    *,
    secret: str | None = SECRET,
    hop: bool = True,
) -> requests.Response:
    """A raw ``POST /_catga/forward``, signed like a peer's."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    path = "/_catga/forward"
    sender = "http://127.0.0.1:1"
    headers = {"Content-Type": "application/json", HEADER_SENDER: sender}
    if secret is not None:
        headers.update(signed_headers(secret, "POST", path, data, sender, time.time()))
    if hop:
        headers[HEADER_HOP] = "1"
    return SESSION.post(endpoint + path, data=data, headers=headers, timeout=WAIT)


def forwarder_for(cluster: Cluster, node: ClusterNode) -> HttpClusterForwarder:
    return HttpClusterForwarder.for_node(node, cluster.mediator(node))


# ================================================================================================
# ForwardToLeaderBehavior


def test_a_command_sent_on_a_follower_runs_on_the_leader_and_returns_its_result(
    cluster: Cluster,
) -> None:
    leader, follower = cluster.leader(), cluster.follower()
    ref = new_ref()
    result = cluster.mediator(follower).send(CreateOrder(ref, "ada", 12.5))
    assert result == {"customer": "ada", "amount": 12.5, "node": leader.node_id}
    assert calls(ref) == [leader.node_id]


def test_on_the_leader_the_command_runs_right_there(cluster: Cluster) -> None:
    leader = cluster.leader()
    ref = new_ref()
    assert cluster.mediator(leader).send(CreateOrder(ref, "bo", 1))["node"] == leader.node_id
    assert calls(ref) == [leader.node_id]


def test_a_handlers_error_comes_back_across_the_hop_as_its_own_type_and_message(
    cluster: Cluster,
) -> None:
    leader, follower = cluster.leader(), cluster.follower()
    ref = new_ref()
    with pytest.raises(OrderRejected) as info:
        cluster.mediator(follower).send(CreateOrder(ref, "eve", -3))
    assert type(info.value) is OrderRejected
    assert str(info.value) == "amount must be positive, not -3"
    assert calls(ref) == [leader.node_id]  # it ran once, and was not retried


def test_a_retry_with_the_same_idempotency_key_runs_the_handler_once(cluster: Cluster) -> None:
    leader, follower = cluster.leader(), cluster.follower()
    forwarder = forwarder_for(cluster, follower)
    ref, key = new_ref(), new_ref()
    command = CreateOrder(ref, "cy", 7)
    first = forwarder.forward(command, leader.raft_id, timeout=WAIT, idempotency_key=key)
    again = forwarder.forward(command, leader.raft_id, timeout=WAIT, idempotency_key=key)
    assert first == again == {"customer": "cy", "amount": 7, "node": leader.node_id}
    # The same key sent by the application, from either follower: still the first outcome.
    for node in cluster.followers():
        assert cluster.mediator(node).send(command, idempotency_key=key) == first
    assert calls(ref) == [leader.node_id]


def test_a_failed_command_is_remembered_too(cluster: Cluster) -> None:
    leader, follower = cluster.leader(), cluster.follower()
    forwarder = forwarder_for(cluster, follower)
    ref, key = new_ref(), new_ref()
    for _ in range(2):
        with pytest.raises(OrderRejected, match="amount must be positive, not 0"):
            forwarder.forward(
                CreateOrder(ref, "dee", 0), leader.raft_id, timeout=WAIT, idempotency_key=key
            )
    assert calls(ref) == [leader.node_id]


def test_the_leader_dedups_a_key_sent_to_it_directly_as_well(cluster: Cluster) -> None:
    leader = cluster.leader()
    ref, key = new_ref(), new_ref()
    command = CreateOrder(ref, "ed", 2)
    first = cluster.mediator(leader).send(command, idempotency_key=key)
    again = cluster.mediator(cluster.follower()).send(command, idempotency_key=key)
    assert first == again
    assert calls(ref) == [leader.node_id]


class LosesTheFirstAnswer(HttpClusterForwarder):
    """Delivers the first request, then acts as if its answer was lost on the way back."""

    def __init__(self, base: HttpClusterForwarder) -> None:
        super().__init__(
            sender_id=base.sender_id,
            sender_name=base.sender_name,
            secret=base.secret,
            url_prefix=base.url_prefix,
            mediator=base.mediator,
        )
        self.keys: list[str] = []

    def forward(
        self, command: Any, leader_endpoint: str, *, timeout: float, idempotency_key: str
    ) -> Any:
        self.keys.append(idempotency_key)
        result = super().forward(
            command, leader_endpoint, timeout=timeout, idempotency_key=idempotency_key
        )
        if len(self.keys) == 1:
            raise LeaderUnreachableError("the answer was lost (simulated)")
        return result


def test_a_lost_answer_is_retried_with_the_same_key_and_the_handler_runs_once(
    cluster: Cluster,
) -> None:
    leader, follower = cluster.leader(), cluster.follower()
    forwarder = LosesTheFirstAnswer(forwarder_for(cluster, follower))
    mediator = build_mediator("unused")  # this node's commands, with the lossy forwarder
    mediator.add_behavior(ForwardToLeaderBehavior(follower, forwarder), for_=CreateOrder)
    ref = new_ref()
    result = mediator.send(CreateOrder(ref, "flo", 4))
    assert result["node"] == leader.node_id
    assert len(forwarder.keys) == 2 and forwarder.keys[0] == forwarder.keys[1]
    assert calls(ref) == [leader.node_id]


def test_concurrent_duplicates_of_one_key_run_the_handler_once(cluster: Cluster) -> None:
    leader, followers = cluster.leader(), cluster.followers()
    ref, key = new_ref(), new_ref()
    command = CreateOrder(ref, "gus", 9)
    results: list[Any] = []
    errors: list[BaseException] = []

    def send(node: ClusterNode) -> None:
        try:
            results.append(
                forwarder_for(cluster, node).forward(
                    command, leader.raft_id, timeout=WAIT, idempotency_key=key
                )
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(followers[k % 2],)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 2)
    assert not errors
    assert len(results) == 8 and all(r == results[0] for r in results)
    assert calls(ref) == [leader.node_id]


def test_a_key_reused_for_a_different_command_is_refused(cluster: Cluster) -> None:
    leader, follower = cluster.leader(), cluster.follower()
    forwarder = forwarder_for(cluster, follower)
    ref, key = new_ref(), new_ref()
    forwarder.forward(CreateOrder(ref, "hal", 1), leader.raft_id, timeout=WAIT, idempotency_key=key)
    with pytest.raises(IdempotencyKeyReusedError, match="already used for another"):
        forwarder.forward(
            CreateOrder(ref, "hal", 2), leader.raft_id, timeout=WAIT, idempotency_key=key
        )
    assert calls(ref) == [leader.node_id]


def test_recorded_outcomes_survive_a_leader_change(cluster: Cluster) -> None:
    old = cluster.leader()
    follower = cluster.follower()
    ref, key = new_ref(), new_ref()
    command = CreateOrder(ref, "ida", 5)
    first = cluster.mediator(follower).send(command, idempotency_key=key)
    old.transfer_leadership()
    old.wait_for(lambda s: not s.is_leader, WAIT)
    new = cluster.leader()
    again = cluster.mediator(new if new is not follower else old).send(command, idempotency_key=key)
    assert again == first
    assert calls(ref) == [old.node_id]
    assert new.state(IdempotencyTable).get(f"create-order:{key}") is not None


# ================================================================================================
# LeaderOnlyBehavior on real nodes


def test_leader_only_on_a_follower_names_the_real_leader(cluster: Cluster) -> None:
    leader, follower = cluster.leader(), cluster.follower()
    ref = new_ref()
    with pytest.raises(NotLeaderError) as info:
        cluster.mediator(follower).send(WhoLeads(ref))
    assert str(info.value) == f"This node is not the leader. Leader: {leader.raft_id}"
    assert cluster.mediator(leader).send(WhoLeads(ref)) == leader.node_id
    assert calls(ref) == [leader.node_id]


# ================================================================================================
# The forwarding endpoint


def test_the_endpoint_answers_with_the_result_in_the_documented_shape(cluster: Cluster) -> None:
    leader = cluster.leader()
    ref = new_ref()
    body: dict[str, Any] = {
        "command": "create-order",
        "payload": {"ref": ref, "customer": "jo", "amount": 3},
        "idempotency_key": new_ref(),
        "deadline": 5,
    }
    response = post_forward(leader.raft_id, body)
    assert response.status_code == 200
    assert response.json() == {"result": {"customer": "jo", "amount": 3.0, "node": leader.node_id}}
    failing = {**body, "payload": {**body["payload"], "amount": -1}, "idempotency_key": None}
    failed = post_forward(leader.raft_id, failing)
    assert failed.status_code == 200
    assert failed.json() == {"error": {"type": f"{__name__}:OrderRejected", "message": ANY_TEXT}}


class _AnyText:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)


ANY_TEXT: Any = _AnyText()


def test_a_forwarded_request_reaching_a_follower_is_refused_not_forwarded_again(
    cluster: Cluster,
) -> None:
    leader, follower = cluster.leader(), cluster.follower()
    ref = new_ref()
    body = {"command": "create-order", "payload": {"ref": ref, "customer": "kim", "amount": 1}}
    response = post_forward(follower.raft_id, body)
    assert response.status_code == 409
    answer = response.json()
    assert answer["error"] == "not_leader"
    assert answer["leader"] == leader.raft_id
    assert answer["message"] == f"This node is not the leader. Leader: {leader.raft_id}"
    assert calls(ref) == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "malformed_json"),
        (b"[1, 2]", "invalid_forward"),
        ({"command": "create-order"}, "invalid_forward"),
        ({"command": "create-order", "payload": {}, "extra": 1}, "invalid_forward"),
        ({"command": 7, "payload": {}}, "invalid_forward"),
        ({"command": "create-order", "payload": {}, "idempotency_key": ""}, "invalid_forward"),
        ({"command": "create-order", "payload": {}, "idempotency_key": 5}, "invalid_forward"),
        ({"command": "create-order", "payload": {}, "deadline": 0}, "invalid_forward"),
        ({"command": "create-order", "payload": {}, "deadline": "soon"}, "invalid_forward"),
        ({"command": "delete-everything", "payload": {}}, "unknown_command"),
        ({"command": "create-order", "payload": []}, "invalid_payload"),
        ({"command": "create-order", "payload": {"customer": "x"}}, "invalid_payload"),
        (
            {"command": "create-order", "payload": {"customer": "x", "amount": "1", "ref": "r"}},
            "invalid_payload",
        ),
        (
            {"command": "create-order", "payload": {"customer": 1, "amount": 1, "ref": "r"}},
            "invalid_payload",
        ),
    ],
)
def test_bad_bodies_are_refused_with_400_and_nothing_runs(
    cluster: Cluster, body: bytes | dict[str, Any], code: str
) -> None:
    leader = cluster.leader()
    if isinstance(body, dict) and isinstance(body.get("payload"), dict):
        body["payload"].setdefault("ref", "bad-body")
    before = leader.state(IdempotencyTable).size()
    response = post_forward(leader.raft_id, body)
    assert response.status_code == 400
    assert response.json()["error"] == code
    assert response.json()["message"]
    assert calls("bad-body") == [] and calls("r") == []
    assert leader.state(IdempotencyTable).size() == before


def test_an_oversized_body_is_refused_with_413_before_it_is_read(cluster: Cluster) -> None:
    leader = cluster.leader()
    host, port = leader.raft_id.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=WAIT)
    try:
        # Only the headers are sent: the node must answer from Content-Length alone.
        connection.putrequest("POST", "/_catga/forward")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(9 << 20))
        connection.putheader(HEADER_SENDER, "http://127.0.0.1:1")
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["error"] == "payload_too_large"
    finally:
        connection.close()


def test_a_bad_signature_is_refused_with_401_and_nothing_runs(cluster: Cluster) -> None:
    leader = cluster.leader()
    ref = new_ref()
    body = {"command": "create-order", "payload": {"ref": ref, "customer": "lu", "amount": 1}}
    wrong = post_forward(leader.raft_id, body, secret="not-the-cluster-secret-at-all-0000")
    unsigned = post_forward(leader.raft_id, body, secret=None)
    assert wrong.status_code == unsigned.status_code == 401
    assert wrong.json()["error"] == "unauthorized"
    assert calls(ref) == []


def test_other_methods_get_a_json_405(cluster: Cluster) -> None:
    response = SESSION.get(cluster.leader().raft_id + "/_catga/forward", timeout=WAIT)
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"


# ================================================================================================
# Failover and no leader


def test_a_leader_killed_mid_way_is_retried_against_the_new_leader() -> None:
    c = Cluster().start()
    try:
        old, follower = c.leader(), c.follower()

        class KillsTheLeaderFirst(HttpClusterForwarder):
            """The leader dies between the follower's choice and its request."""

            targets: ClassVar[list[tuple[str, str]]] = []

            def forward(
                self, command: Any, leader_endpoint: str, *, timeout: float, idempotency_key: str
            ) -> Any:
                self.targets.append((leader_endpoint, idempotency_key))
                if len(self.targets) == 1:
                    c.node_at(leader_endpoint).stop(transfer=False)
                return super().forward(
                    command, leader_endpoint, timeout=timeout, idempotency_key=idempotency_key
                )

        forwarder = KillsTheLeaderFirst(
            sender_id=follower.raft_id, url_prefix="/_catga", mediator=c.mediator(follower)
        )
        mediator = build_mediator("unused")
        mediator.add_behavior(
            ForwardToLeaderBehavior(follower, forwarder, timeout=WAIT), for_=CreateOrder
        )
        ref = new_ref()
        result = mediator.send(CreateOrder(ref, "max", 8))
        assert forwarder.targets[0][0] == old.raft_id
        assert len({key for _, key in forwarder.targets}) == 1  # one key across every retry
        assert result["node"] != old.node_id
        assert calls(ref) == [result["node"]]
    finally:
        c.stop()


def test_without_a_leader_the_behavior_gives_up_at_its_deadline_saying_so() -> None:
    (port,) = free_ports(1)
    endpoint = f"http://127.0.0.1:{port}"
    config = ClusterConfig(
        local_node_endpoint=endpoint,
        members=(endpoint, "http://127.0.0.1:1", "http://127.0.0.1:2"),
        node_id="lonely",
        election_timeout=timedelta(milliseconds=300),
        heartbeat_interval=timedelta(milliseconds=100),
    )
    mediator = build_mediator("lonely")
    node = ClusterNode(config, storage=MemoryStorage("lonely"), mediator=mediator)
    mediator.add_behavior(ForwardToLeaderBehavior(node, timeout=0.3), for_=CreateOrder)
    with node:
        ref = new_ref()
        with pytest.raises(NoLeaderError, match=r"no leader was known within 0\.30s") as info:
            mediator.send(CreateOrder(ref, "ned", 1))
        assert not isinstance(info.value, CommitTimeoutError)
        assert calls(ref) == []


def unstarted_node(mediator: Mediator | None = None) -> ClusterNode:
    endpoint = "http://127.0.0.1:1"
    config = ClusterConfig(local_node_endpoint=endpoint, members=(endpoint,), node_id="idle")
    return ClusterNode(config, storage=MemoryStorage("idle"), mediator=mediator)


def test_the_behavior_called_outside_mediator_send_is_a_usage_error() -> None:
    behavior = ForwardToLeaderBehavior(unstarted_node())
    with pytest.raises(UsageError, match=r"runs inside Mediator\.send; add it there") as caught:
        behavior(CreateOrder(new_ref(), "ned", 1), lambda: None)
    assert isinstance(caught.value, CatgaError)


def test_a_forwarder_without_a_mediator_outside_a_send_is_a_usage_error() -> None:
    forwarder = HttpClusterForwarder(sender_id="http://127.0.0.1:1")
    with pytest.raises(UsageError, match="needs a mediator to name the command") as caught:
        forwarder.forward(
            CreateOrder(new_ref(), "ned", 1), "http://127.0.0.1:2", timeout=1.0, idempotency_key="k"
        )
    assert isinstance(caught.value, CatgaError)


def test_the_guard_on_a_node_without_the_idempotency_table_is_a_not_registered_error() -> None:
    guard = guard_for(unstarted_node())  # no mediator: the node registers no idempotency table
    with pytest.raises(NotRegisteredError, match=r"has no catga\.idempotency table") as caught:
        guard.run_once(
            "create-order",
            "key-1",
            "digest",
            lambda: None,
            deadline=time.monotonic() + 1,
            encode=lambda result: result,
        )
    assert isinstance(caught.value, CatgaError)
    assert isinstance(caught.value, LookupError)


# ================================================================================================
# Flask apps: CatgaCluster(app, mediator=...) and the view decorators, through real sockets

VIEW_CALLS: dict[str, list[str]] = defaultdict(list)


def create_app(config: ClusterConfig, mediator: Mediator | None = None) -> Flask:
    app = Flask(f"forwarding-test-{config.node_id}")
    cluster = CatgaCluster(app, config=config, mediator=mediator)
    name = config.node_id

    @app.route("/echo", methods=["GET", "POST", "PUT"])
    @cluster.forward_to_leader
    def echo() -> Response:
        VIEW_CALLS[request.args.get("ref", "")].append(name)
        response = jsonify(
            node=name,
            method=request.method,
            path=request.path,
            query=request.query_string.decode(),
            body=request.get_data(as_text=True),
            hop=request.headers.get(HEADER_HOP),
            custom=request.headers.get("X-Custom"),
            private=request.headers.get("X-Private"),
            keep_alive=request.headers.get("Keep-Alive"),
            forwarded_for=request.headers.get("X-Forwarded-For"),
        )
        response.status_code = 201
        response.headers["X-Answer"] = "from-the-view"
        response.headers["ETag"] = '"v1"'
        response.set_cookie("a", "1")
        response.set_cookie("b", "2")
        return response

    @app.route("/gzip")
    @cluster.forward_to_leader(timeout=5)
    def compressed() -> Response:
        body = gzip.compress(json.dumps({"node": name}).encode())
        return Response(
            body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    @app.route("/quick")
    @cluster.forward_to_leader(timeout=0.4)
    def quick() -> str:
        return name

    @app.route("/leader-only")
    @cluster.leader_only
    def leader_only() -> str:
        VIEW_CALLS["leader-only"].append(name)
        return name

    return app


class FlaskCluster:
    def __init__(self) -> None:
        ports = free_ports(3)
        members = tuple(f"http://127.0.0.1:{p}" for p in ports)
        self.apps: list[Flask] = []
        self.servers = []
        for k in range(3):
            config = ClusterConfig(
                local_node_endpoint=members[k],
                members=members,
                node_id=f"web{k}",
                election_timeout=timedelta(milliseconds=300),
                heartbeat_interval=timedelta(milliseconds=100),
                persistent_state_path=None,
            )
            mediator = build_mediator(f"web{k}")
            app = create_app(config, mediator)
            node = CatgaCluster.state_of(app).node
            mediator.add_behavior(ForwardToLeaderBehavior(node.coordinator), for_=CreateOrder)
            server = make_threaded_server(app, "127.0.0.1", ports[k])
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.apps.append(app)
            self.servers.append(server)
        self.nodes = [CatgaCluster.state_of(app).node for app in self.apps]

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()
        for node in self.nodes:
            node.stop(transfer=False)

    def leader(self) -> ClusterNode:
        leader_endpoint = self.nodes[0].coordinator.wait_for_leader(WAIT)
        leader = next(n for n in self.nodes if n.raft_id == leader_endpoint)
        leader.wait_for(lambda s: s.is_leader and s.commit_term == s.term, WAIT)
        for node in self.nodes:
            node.wait_for(lambda s: s.leader_endpoint == leader.raft_id, WAIT)
        return leader

    def follower(self) -> ClusterNode:
        leader = self.leader()
        return next(n for n in self.nodes if n is not leader)


@pytest.fixture(scope="module")
def web() -> Iterator[FlaskCluster]:
    c = FlaskCluster()
    try:
        yield c
    finally:
        c.stop()


def test_forward_to_leader_relays_status_headers_and_body_intact(web: FlaskCluster) -> None:
    leader, follower = web.leader(), web.follower()
    ref = new_ref()
    response = SESSION.post(
        f"{follower.raft_id}/echo?ref={ref}&x=1",
        data=b"hello leader",
        headers={
            "X-Custom": "kept",
            "Content-Type": "text/plain",
            "Connection": "keep-alive, X-Private",
            "X-Private": "for the first hop only",
            "Keep-Alive": "timeout=5",
        },
        timeout=WAIT,
    )
    assert response.status_code == 201
    assert response.headers["X-Answer"] == "from-the-view"
    assert response.headers["ETag"] == '"v1"'
    assert response.raw.headers.getlist("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    seen = response.json()
    assert seen == {
        "node": leader.node_id,
        "method": "POST",
        "path": "/echo",
        "query": f"ref={ref}&x=1",
        "body": "hello leader",
        "hop": "1",
        "custom": "kept",
        "private": None,  # named by Connection: hop-by-hop, not relayed
        "keep_alive": None,
        "forwarded_for": "127.0.0.1",
    }
    assert VIEW_CALLS[ref] == [leader.node_id]


def test_forward_to_leader_serves_the_leader_itself_locally(web: FlaskCluster) -> None:
    leader = web.leader()
    ref = new_ref()
    response = SESSION.get(f"{leader.raft_id}/echo?ref={ref}", timeout=WAIT)
    assert response.status_code == 201
    assert response.json()["node"] == leader.node_id
    assert response.json()["hop"] is None
    assert VIEW_CALLS[ref] == [leader.node_id]


def test_a_compressed_answer_is_relayed_byte_for_byte(web: FlaskCluster) -> None:
    leader, follower = web.leader(), web.follower()
    response = SESSION.get(f"{follower.raft_id}/gzip", timeout=WAIT, stream=True)
    raw = response.raw.read(decode_content=False)
    assert response.headers["Content-Encoding"] == "gzip"
    assert int(response.headers["Content-Length"]) == len(raw)
    assert json.loads(gzip.decompress(raw)) == {"node": leader.node_id}


def test_a_relayed_request_is_never_forwarded_twice(web: FlaskCluster) -> None:
    leader, follower = web.leader(), web.follower()
    ref = new_ref()
    refused = SESSION.put(
        f"{follower.raft_id}/echo?ref={ref}", headers={HEADER_HOP: "1"}, timeout=WAIT
    )
    assert refused.status_code == 503
    assert refused.json() == {
        "error": "not_leader",
        "message": f"This node is not the leader. Leader: {leader.raft_id}",
        "leader": leader.raft_id,
    }
    served = SESSION.put(
        f"{leader.raft_id}/echo?ref={ref}", headers={HEADER_HOP: "1"}, timeout=WAIT
    )
    assert served.status_code == 201
    assert VIEW_CALLS[ref] == [leader.node_id]


def test_leader_only_views(web: FlaskCluster) -> None:
    leader, follower = web.leader(), web.follower()
    VIEW_CALLS["leader-only"].clear()
    refused = SESSION.get(f"{follower.raft_id}/leader-only", timeout=WAIT)
    assert refused.status_code == 503
    assert refused.json() == {
        "error": "not_leader",
        "message": f"This node is not the leader. Leader: {leader.raft_id}",
        "leader": leader.raft_id,
    }
    served = SESSION.get(f"{leader.raft_id}/leader-only", timeout=WAIT)
    assert (served.status_code, served.text) == (200, leader.node_id)
    assert VIEW_CALLS["leader-only"] == [leader.node_id]


def test_the_extension_serves_the_forwarding_endpoint_with_the_mediator(web: FlaskCluster) -> None:
    leader, follower = web.leader(), web.follower()
    mediator = CatgaCluster.state_of(web.apps[web.nodes.index(follower)]).cluster.mediator
    assert mediator is not None
    ref, key = new_ref(), new_ref()
    first = mediator.send(CreateOrder(ref, "ola", 2), idempotency_key=key)
    again = mediator.send(CreateOrder(ref, "ola", 2), idempotency_key=key)
    assert first == again == {"customer": "ola", "amount": 2, "node": leader.node_id}
    assert calls(ref) == [leader.node_id]


def test_without_a_leader_the_decorators_answer_503() -> None:
    (port,) = free_ports(1)
    endpoint = f"http://127.0.0.1:{port}"
    config = ClusterConfig(
        local_node_endpoint=endpoint,
        members=(endpoint, "http://127.0.0.1:1", "http://127.0.0.1:2"),  # no quorum, ever
        node_id="alone",
        election_timeout=timedelta(milliseconds=300),
        heartbeat_interval=timedelta(milliseconds=100),
    )
    app = create_app(config)
    server = make_threaded_server(app, "127.0.0.1", port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for path in ("/quick", "/leader-only"):
            response = SESSION.get(endpoint + path, timeout=WAIT)
            assert response.status_code == 503
            answer = response.json()
            assert answer["error"] == "not_leader"
            assert answer["leader"] is None
            assert answer["message"].startswith("This node is not the leader. Leader: none")
    finally:
        server.shutdown()
        server.server_close()
        CatgaCluster.state_of(app).node.stop(transfer=False)


# -- the node's default forwarder (the guide's one IClusterForwarder for the whole app) ----------


class RecordingForwarder:
    """A ClusterForwarder that says what it was asked and answers for the leader."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, str]] = []

    def forward(
        self, command: Any, leader_endpoint: str, *, timeout: float, idempotency_key: str
    ) -> Any:
        self.sent.append((command, leader_endpoint))
        return {"node": "via-default-forwarder"}


def test_without_a_forwarder_the_behavior_uses_the_nodes_default_http_one() -> None:
    node = unstarted_node()
    default = node.forwarder
    assert isinstance(default, HttpClusterForwarder)
    assert default.sender_id == node.raft_id
    assert node.forwarder is default  # made once, shared by every behavior
    assert ForwardToLeaderBehavior(node).forwarder is default
    assert default_forwarder(node) is default


def test_a_forwarder_given_to_the_node_or_the_extension_is_every_behaviors_default() -> None:
    forwarder = RecordingForwarder()
    endpoint = "http://127.0.0.1:1"
    config = ClusterConfig(local_node_endpoint=endpoint, members=(endpoint,), node_id="idle")
    node = ClusterNode(config, storage=MemoryStorage("idle"), forwarder=forwarder)
    assert node.forwarder is forwarder
    assert ForwardToLeaderBehavior(node).forwarder is forwarder
    assert ForwardToLeaderBehavior(node.coordinator).forwarder is forwarder
    own = RecordingForwarder()
    assert ForwardToLeaderBehavior(node, own).forwarder is own  # one given wins

    app = Flask("default_forwarder")
    app.config.update(CATGA_CLUSTER_LOCAL_NODE_ENDPOINT=endpoint, CATGA_CLUSTER_AUTOSTART=False)
    CatgaCluster(app, forwarder=forwarder)
    assert CatgaCluster.state_of(app).node.forwarder is forwarder


def test_a_follower_forwards_through_the_clusters_default_forwarder(cluster: Cluster) -> None:
    follower = cluster.follower()
    forwarder = RecordingForwarder()
    guard = guard_for(follower)
    default, guard.forwarder = guard.forwarder, forwarder  # as ClusterNode(forwarder=...) does
    try:
        mediator = build_mediator("unused")
        mediator.add_behavior(ForwardToLeaderBehavior(follower), for_=CreateOrder)
        command = CreateOrder(new_ref(), "ida", 3)
        assert mediator.send(command) == {"node": "via-default-forwarder"}
        assert forwarder.sent == [(command, cluster.leader().raft_id)]
    finally:  # the cluster is the module's: the tests after this one forward for real
        guard.forwarder = default


def test_a_forwarder_that_is_not_one_is_refused_naming_the_protocol() -> None:
    endpoint = "http://127.0.0.1:1"
    config = ClusterConfig(local_node_endpoint=endpoint, members=(endpoint,), node_id="idle")
    with pytest.raises(TypeError, match=r"takes a ClusterForwarder .*forward\(command"):
        ClusterNode(config, storage=MemoryStorage("idle"), forwarder="http")  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [0.0, -0.5, -30.0])
def test_forwarding_with_no_time_left_is_a_commit_timeout_not_a_socket_error(
    timeout: float,
) -> None:
    """A retry that wakes after its deadline used to hand a negative timeout to the socket
    (ValueError: Timeout value out of range, seen with 10,000 locks renewing at once)."""
    from catga_sync.transport.proposals import ProposalClient

    with blackhole() as port:
        client = ProposalClient(
            sender_id="http://127.0.0.1:1",
            sender_name="node-a",
            secret=None,
            url_prefix="/_catga",
            connect_timeout=0.5,
        )
        with pytest.raises(CommitTimeoutError, match="no time was left"):
            client.forward(f"http://127.0.0.1:{port}", b"{}", timeout)
