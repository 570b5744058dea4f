"""The example OrderSystem's routes, through the Flask test client, on a one-node cluster (it
elects itself; memory state): every route, every bad body (400 or 413, a JSON error, nothing
applied), idempotency keys, version conflicts, and the 503s of a cluster without a leader."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from helpers import free_ports

from catga_sync.config import ClusterConfig
from catga_sync.fsm import error_type_name, rebuild_error
from catga_sync.node import ClusterNode
from catga_sync.web.extension import CatgaCluster
from example_flask import MAX_BODY_BYTES, create_app
from example_flask.orders import InvalidOrder, OrderNotFound, Orders, VersionConflict

WAIT = 10.0


def _settled(node: ClusterNode) -> None:
    """Leading, with the leader's no-op committed and applied: the commit index now moves only
    when a request appends something."""
    node.wait_for(
        lambda s: s.is_leader and s.commit_term == s.term and s.last_applied >= s.commit_index,
        WAIT,
    )


@pytest.fixture
def app() -> Iterator[Flask]:
    # Without the background work: these tests count log entries to prove nothing was applied.
    app = create_app(
        ClusterConfig(local_node_endpoint="http://localhost:7431", node_id="solo"),
        EXAMPLE_BACKGROUND=False,
    )
    node = CatgaCluster.state_of(app).node
    try:
        _settled(node)
        yield app
    finally:
        node.stop()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def node_of(client: FlaskClient) -> ClusterNode:
    return CatgaCluster.state_of(client.application).node


def create(client: FlaskClient, customer: str = "ada", amount: float = 12.5, **kw: Any) -> Any:
    response = client.post("/orders", json={"customer": customer, "amount": amount}, **kw)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def everything(client: FlaskClient) -> tuple[Any, int]:
    """The orders and the commit index: both unchanged means nothing was applied."""
    orders = client.get("/orders").get_json()
    return orders, node_of(client).status.commit_index


def assert_json_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.data
    assert response.is_json
    body: dict[str, Any] = response.get_json()
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["message"], str) and body["message"]
    if code is not None:
        assert body["error"] == code, body
    return body


# -- the routes ------------------------------------------------------------------------------


def test_post_creates_an_order_with_the_contract_shape(client: FlaskClient) -> None:
    response = client.post("/orders", json={"customer": "ada", "amount": 12.5})
    assert response.status_code == 201
    order = response.get_json()
    assert order == {
        "id": order["id"],
        "customer": "ada",
        "amount": 12.5,
        "status": "created",
        "version": 1,
    }
    assert isinstance(order["id"], str) and order["id"]


def test_get_returns_the_order_and_the_list_holds_every_order(client: FlaskClient) -> None:
    first = create(client, "ada", 1)
    second = create(client, "bob", 2.25)
    assert first["id"] != second["id"]
    response = client.get(f"/orders/{second['id']}")
    assert response.status_code == 200
    assert response.get_json() == second
    listing = client.get("/orders")
    assert listing.status_code == 200
    assert listing.get_json() == {"orders": [first, second]}


def test_the_list_is_empty_at_first(client: FlaskClient) -> None:
    assert client.get("/orders").get_json() == {"orders": []}


def test_get_of_an_unknown_order_is_a_json_404(client: FlaskClient) -> None:
    create(client)
    assert_json_error(client.get("/orders/nope"), 404, "not_found")


def test_patch_sets_the_status_and_bumps_the_version(client: FlaskClient) -> None:
    order = create(client)
    response = client.patch(
        f"/orders/{order['id']}", json={"status": "paid", "expected_version": 1}
    )
    assert response.status_code == 200
    assert response.get_json() == {**order, "status": "paid", "version": 2}
    assert client.get(f"/orders/{order['id']}").get_json()["version"] == 2
    response = client.patch(
        f"/orders/{order['id']}", json={"status": "shipped", "expected_version": 2}
    )
    assert response.get_json() == {**order, "status": "shipped", "version": 3}


def test_a_stale_expected_version_is_a_409_with_the_current_version(client: FlaskClient) -> None:
    order = create(client)
    path = f"/orders/{order['id']}"
    assert client.patch(path, json={"status": "paid", "expected_version": 1}).status_code == 200
    before = client.get(path).get_json()
    body = assert_json_error(
        client.patch(path, json={"status": "cancelled", "expected_version": 1}),
        409,
        "version_conflict",
    )
    assert body["current_version"] == 2
    assert client.get(path).get_json() == before
    # A version from the future is stale too.
    body = assert_json_error(
        client.patch(path, json={"status": "x", "expected_version": 7}), 409, "version_conflict"
    )
    assert body["current_version"] == 2


def test_patch_of_an_unknown_order_is_a_404_and_changes_nothing(client: FlaskClient) -> None:
    create(client)
    before = client.get("/orders").get_json()
    response = client.patch("/orders/nope", json={"status": "paid", "expected_version": 1})
    assert_json_error(response, 404, "not_found")
    assert client.get("/orders").get_json() == before


def test_the_index_and_the_library_routes_remain(client: FlaskClient) -> None:
    index = client.get("/").get_json()
    assert index["node_id"] == "solo" and index["is_leader"] is True
    assert "/orders" in index["see"]
    assert client.get("/cluster").get_json()["role"] == "leader"
    assert client.get("/health").status_code == 200


def test_routing_errors_are_json_too(client: FlaskClient) -> None:
    assert_json_error(client.get("/no-such-route"), 404)
    response = client.delete("/orders")
    assert_json_error(response, 405)
    assert "POST" in response.headers["Allow"]


def test_the_module_level_extension_registers_orders_too() -> None:
    # create_app without a ClusterConfig uses the module-level CatgaCluster and Flask config.
    app = create_app(
        CATGA_CLUSTER_LOCAL_NODE_ENDPOINT="http://localhost:7432", CATGA_CLUSTER_NODE_ID="solo2"
    )
    node = CatgaCluster.state_of(app).node
    try:
        _settled(node)
        client = app.test_client()
        order = create(client, "eve", 7)
        assert client.get(f"/orders/{order['id']}").get_json() == order
        assert node.state(Orders).local.get(order["id"]) == order
    finally:
        node.stop()


# -- bad bodies: 400 (or 413), a JSON error, nothing applied -----------------------------------

GOOD_ORDER = {"customer": "ada", "amount": 10}

BAD_ORDER_BODIES: list[tuple[str, bytes | str]] = [
    ("empty", b""),
    ("not json", "customer=ada&amount=10"),
    ("truncated json", '{"customer": "ada", "amount": 1'),
    ("invalid utf-8", b'{"customer": "\xff", "amount": 1}'),
    ("json array", json.dumps([GOOD_ORDER])),
    ("json string", json.dumps("ada")),
    ("json number", "10"),
    ("json null", "null"),
    ("missing amount", json.dumps({"customer": "ada"})),
    ("missing customer", json.dumps({"amount": 10})),
    ("empty object", "{}"),
    ("extra key", json.dumps({**GOOD_ORDER, "id": "1"})),
    ("extra status", json.dumps({**GOOD_ORDER, "status": "paid"})),
    ("customer a number", json.dumps({"customer": 5, "amount": 10})),
    ("customer null", json.dumps({"customer": None, "amount": 10})),
    ("customer a list", json.dumps({"customer": ["ada"], "amount": 10})),
    ("customer empty", json.dumps({"customer": "", "amount": 10})),
    ("customer blank", json.dumps({"customer": "   ", "amount": 10})),
    ("customer too long", json.dumps({"customer": "a" * 201, "amount": 10})),
    ("customer huge", json.dumps({"customer": "a" * 10_000, "amount": 10})),
    ("amount a string", json.dumps({"customer": "ada", "amount": "10"})),
    ("amount null", json.dumps({"customer": "ada", "amount": None})),
    ("amount a list", json.dumps({"customer": "ada", "amount": [10]})),
    ("amount an object", json.dumps({"customer": "ada", "amount": {"value": 10}})),
    ("amount true", json.dumps({"customer": "ada", "amount": True})),
    ("amount false", json.dumps({"customer": "ada", "amount": False})),
    ("amount NaN", '{"customer":"a","amount":NaN}'),
    ("amount Infinity", '{"customer":"a","amount":Infinity}'),
    ("amount -Infinity", '{"customer":"a","amount":-Infinity}'),
    ("amount overflowing to inf", '{"customer":"a","amount":1e400}'),
    ("amount an int too big for a float", '{"customer":"a","amount":1' + "0" * 400 + "}"),
    ("amount zero", json.dumps({"customer": "ada", "amount": 0})),
    ("amount 0.0", json.dumps({"customer": "ada", "amount": 0.0})),
    ("amount negative", json.dumps({"customer": "ada", "amount": -5})),
    ("amount -0.0", '{"customer":"a","amount":-0.0}'),
    ("duplicate keys hiding a bad amount", '{"customer":"a","amount":1,"amount":-1}'),
    ("deep nesting", "[" * 5000 + "]" * 5000),
]


@pytest.mark.parametrize(
    ("body"), [b for _, b in BAD_ORDER_BODIES], ids=[n for n, _ in BAD_ORDER_BODIES]
)
def test_a_bad_order_body_is_a_400_and_applies_nothing(
    client: FlaskClient, body: bytes | str
) -> None:
    create(client)
    before = everything(client)
    response = client.post("/orders", data=body, content_type="application/json")
    assert_json_error(response, 400)
    assert everything(client) == before


def test_an_oversized_body_is_a_413_and_applies_nothing(client: FlaskClient) -> None:
    before = everything(client)
    body = json.dumps({"customer": "a" * MAX_BODY_BYTES, "amount": 1})
    response = client.post("/orders", data=body, content_type="application/json")
    assert_json_error(response, 413, "body_too_large")
    assert everything(client) == before


def test_edge_values_that_are_valid_are_accepted(client: FlaskClient) -> None:
    assert create(client, "a" * 200, 0.01)["customer"] == "a" * 200
    assert create(client, "bob", 10**20)["amount"] == 10**20


BAD_PATCH_BODIES: list[tuple[str, bytes | str]] = [
    ("empty", b""),
    ("not json", "status=paid"),
    ("json array", json.dumps([{"status": "paid", "expected_version": 1}])),
    ("json null", "null"),
    ("missing version", json.dumps({"status": "paid"})),
    ("missing status", json.dumps({"expected_version": 1})),
    ("extra key", json.dumps({"status": "paid", "expected_version": 1, "amount": 5})),
    ("status a number", json.dumps({"status": 5, "expected_version": 1})),
    ("status null", json.dumps({"status": None, "expected_version": 1})),
    ("status empty", json.dumps({"status": "", "expected_version": 1})),
    ("status blank", json.dumps({"status": "  ", "expected_version": 1})),
    ("status too long", json.dumps({"status": "s" * 51, "expected_version": 1})),
    ("version a string", json.dumps({"status": "paid", "expected_version": "1"})),
    ("version a float", json.dumps({"status": "paid", "expected_version": 1.0})),
    ("version zero", json.dumps({"status": "paid", "expected_version": 0})),
    ("version negative", json.dumps({"status": "paid", "expected_version": -1})),
    ("version true", json.dumps({"status": "paid", "expected_version": True})),
    ("version null", json.dumps({"status": "paid", "expected_version": None})),
    ("version NaN", '{"status":"paid","expected_version":NaN}'),
]


@pytest.mark.parametrize(
    ("body"), [b for _, b in BAD_PATCH_BODIES], ids=[n for n, _ in BAD_PATCH_BODIES]
)
def test_a_bad_patch_body_is_a_400_and_applies_nothing(
    client: FlaskClient, body: bytes | str
) -> None:
    order = create(client)
    before = everything(client)
    response = client.patch(f"/orders/{order['id']}", data=body, content_type="application/json")
    assert_json_error(response, 400)
    assert everything(client) == before
    # The body is checked before the id: a bad body on an unknown order is a 400 too.
    response = client.patch("/orders/nope", data=body, content_type="application/json")
    assert_json_error(response, 400)
    assert everything(client) == before


def test_edge_patch_values_that_are_valid_are_accepted(client: FlaskClient) -> None:
    order = create(client)
    response = client.patch(
        f"/orders/{order['id']}", json={"status": "s" * 50, "expected_version": 1}
    )
    assert response.status_code == 200
    assert response.get_json()["status"] == "s" * 50


# -- Idempotency-Key -------------------------------------------------------------------------


def test_a_repeated_idempotency_key_returns_the_same_order_and_creates_nothing(
    client: FlaskClient,
) -> None:
    first = create(client, "ada", 5, headers={"Idempotency-Key": "order-ada-1"})
    before = client.get("/orders").get_json()
    again = create(client, "ada", 5, headers={"Idempotency-Key": "order-ada-1"})
    assert again == first
    # The key names the request: even another body gets the first answer, and nothing new.
    other = create(client, "bob", 9, headers={"Idempotency-Key": "order-ada-1"})
    assert other == first
    assert client.get("/orders").get_json() == before
    assert len(before["orders"]) == 1


def test_different_keys_and_no_key_create_different_orders(client: FlaskClient) -> None:
    a = create(client, headers={"Idempotency-Key": "k-1"})
    b = create(client, headers={"Idempotency-Key": "k-2"})
    c = create(client)
    d = create(client)
    assert len({a["id"], b["id"], c["id"], d["id"]}) == 4


def test_a_key_that_looks_like_an_internal_request_id_is_still_just_a_key(
    client: FlaskClient,
) -> None:
    session = node_of(client)._client.client_id
    a = create(client, headers={"Idempotency-Key": f"{session}#1"})
    b = create(client, headers={"Idempotency-Key": f"{session}#1"})
    c = create(client)  # the node's own session: not confused with the key above
    assert a == b and c["id"] != a["id"]


def test_a_repeated_patch_with_its_key_returns_the_first_answer(client: FlaskClient) -> None:
    order = create(client)
    path = f"/orders/{order['id']}"
    body = {"status": "paid", "expected_version": 1}
    first = client.patch(path, json=body, headers={"Idempotency-Key": "pay-1"})
    again = client.patch(path, json=body, headers={"Idempotency-Key": "pay-1"})
    assert first.status_code == again.status_code == 200
    assert first.get_json() == again.get_json() == {**order, "status": "paid", "version": 2}
    # Without the key, the retry is a new request, and the version check refuses it.
    assert client.patch(path, json=body).status_code == 409


def test_a_key_reused_on_another_route_is_another_request(client: FlaskClient) -> None:
    order = create(client, headers={"Idempotency-Key": "shared"})
    response = client.patch(
        f"/orders/{order['id']}",
        json={"status": "paid", "expected_version": 1},
        headers={"Idempotency-Key": "shared"},
    )
    assert response.status_code == 200
    assert response.get_json()["version"] == 2


@pytest.mark.parametrize("key", ["", "k" * 201, "tab\there", "caf\u00e9"])
def test_a_bad_idempotency_key_is_a_400_and_applies_nothing(client: FlaskClient, key: str) -> None:
    before = everything(client)
    response = client.post("/orders", json=GOOD_ORDER, headers={"Idempotency-Key": key})
    assert_json_error(response, 400, "invalid_idempotency_key")
    assert everything(client) == before


# -- a cluster that cannot take requests: 503 with Retry-After ---------------------------------


@pytest.fixture
def lonely_client() -> Iterator[FlaskClient]:
    """One node of three whose peers never answer: it never has a leader. The peers' ports
    stay bound (not listening: connections are refused) for the whole test, so that no node
    of a test running beside it can take one of them and answer this node's votes."""
    reserved = [socket.socket() for _ in range(2)]
    for sock in reserved:
        sock.bind(("127.0.0.1", 0))
    ports = [free_ports(1)[0], *(sock.getsockname()[1] for sock in reserved)]
    members = tuple(f"http://127.0.0.1:{p}" for p in ports)
    config = ClusterConfig(
        local_node_endpoint=members[0],
        members=members,
        node_id="lonely",
        election_timeout=timedelta(milliseconds=150),
        heartbeat_interval=timedelta(milliseconds=50),
    )
    app = create_app(config)
    try:
        yield app.test_client()
    finally:
        CatgaCluster.state_of(app).node.stop(transfer=False)
        for sock in reserved:
            sock.close()


def test_reads_without_a_leader_are_503_with_retry_after(lonely_client: FlaskClient) -> None:
    for path in ("/orders", "/orders/1"):
        response = lonely_client.get(path)
        body = assert_json_error(response, 503, "no_leader")
        assert body["message"] == "This node is not the leader. Leader: none"
        assert response.headers["Retry-After"]


def test_writes_without_a_leader_fail_as_503_no_leader_not_applied(
    lonely_client: FlaskClient,
) -> None:
    """A node that never learns of a leader sends the command nowhere: after the commit
    timeout it says "no leader", and that it was not applied (unlike an unknown outcome)."""
    app = lonely_client.application

    def post(headers: dict[str, str]) -> Any:
        return app.test_client().post("/orders", json=GOOD_ORDER, headers=headers)

    # The two waits run side by side: each lasts the node's full commit timeout.
    with ThreadPoolExecutor(2) as pool:
        keyed, unkeyed = pool.map(post, [{"Idempotency-Key": "k-503"}, {}])
    for response in (keyed, unkeyed):
        body = assert_json_error(response, 503, "no_leader")
        assert response.headers["Retry-After"]
        assert "it was not applied" in body["message"]
    assert app.test_client().get("/orders").status_code == 503  # and no leader to read from


def test_a_stopped_node_answers_503(app: Flask) -> None:
    client = app.test_client()
    CatgaCluster.state_of(app).node.stop()
    response = client.get("/orders")
    assert_json_error(response, 503, "unavailable")
    assert response.headers["Retry-After"]
    # A write on a stopped node gives up at once, and says it was not sent.
    response = client.post("/orders", json=GOOD_ORDER)
    body = assert_json_error(response, 503, "unavailable")
    assert "is not running" in body["message"]


# -- the state machine's own rules -------------------------------------------------------------


def test_the_state_machine_refuses_bad_arguments_itself(app: Flask) -> None:
    # The routes check first; the commands check again, so another caller cannot break the
    # state either (the entry is in the log, its command raised, the state is unchanged).
    orders = CatgaCluster.state_of(app).node.state(Orders)
    for customer, amount in [("", 1), ("a", 0), ("a", True), ("a", "1"), (None, 1)]:
        with pytest.raises(InvalidOrder):
            orders.create(customer, amount)
    order = orders.create("ada", 1)
    for status, version in [("", 1), ("x" * 51, 1), ("paid", 0), ("paid", True)]:
        with pytest.raises(InvalidOrder):
            orders.update(order["id"], status, version)
    assert orders.all_orders() == [order]


def test_a_version_conflict_rebuilt_from_its_message_keeps_the_current_version() -> None:
    # Only type and message cross the hop from the leader; the current version survives.
    original = VersionConflict.for_versions("7", expected=1, current=4)
    rebuilt = rebuild_error(error_type_name(original), str(original))
    assert type(rebuilt) is VersionConflict
    assert str(rebuilt) == str(original)
    assert rebuilt.current_version == original.current_version == 4
    missing = rebuild_error(error_type_name(OrderNotFound.for_id("9")), "gone")
    assert type(missing) is OrderNotFound and str(missing) == "gone"


# -- the guide's flow: ShipOrder through the mediator ------------------------------------------


def test_ship_runs_through_the_mediator_and_bumps_the_version(client: FlaskClient) -> None:
    order = create(client)
    response = client.post(f"/orders/{order['id']}/ship")
    assert response.status_code == 200
    shipped = {**order, "status": "shipped", "version": 2}
    assert response.get_json() == shipped
    # Shipping a shipped order is harmless: same answer, nothing changes.
    assert client.post(f"/orders/{order['id']}/ship").get_json() == shipped
    assert client.get(f"/orders/{order['id']}").get_json() == shipped


def test_ship_errors_are_json(client: FlaskClient) -> None:
    assert_json_error(client.post("/orders/nope/ship"), 404, "not_found")
    order = create(client)
    path = f"/orders/{order['id']}"
    client.patch(path, json={"status": "cancelled", "expected_version": 1})
    before = everything(client)
    assert_json_error(client.post(f"{path}/ship"), 409, "cannot_ship")
    assert client.get(path).get_json()["status"] == "cancelled"
    assert everything(client)[0] == before[0]
    before = everything(client)
    assert_json_error(client.post(f"{path}/ship", data="{}"), 400, "invalid_body")
    assert everything(client) == before


def test_ship_with_an_idempotency_key_runs_once_per_key(client: FlaskClient) -> None:
    first, second = create(client), create(client)
    headers = {"Idempotency-Key": "ship-1"}
    answer = client.post(f"/orders/{first['id']}/ship", headers=headers)
    again = client.post(f"/orders/{first['id']}/ship", headers=headers)
    assert answer.status_code == again.status_code == 200
    assert answer.get_json() == again.get_json()
    # The same key for another order is a mistake, refused: nothing ships.
    assert_json_error(
        client.post(f"/orders/{second['id']}/ship", headers=headers), 422, "idempotency_key_reused"
    )
    assert client.get(f"/orders/{second['id']}").get_json() == second


# -- the bad-input corpus --------------------------------------------------------------------

JSON_ROUTES = [
    ("POST", "/orders", {"customer": "ada", "amount": 12.5}),
    ("PATCH", "/orders/1", {"status": "paid", "expected_version": 1}),
    ("POST", "/locks/corpus", {"ttl": 5, "wait": 0, "owner": "corpus"}),
    ("DELETE", "/locks/corpus", {"token": 1}),
]


def _corpus(seed: int, count: int) -> list[tuple[str, bytes, str | None]]:
    """Malformed bodies made from each route's valid body: (why, body, content type). None is
    valid: every one breaks the JSON, the strictness rules, the size or the content type."""
    import random

    rng = random.Random(seed)
    made: list[tuple[str, bytes, str | None]] = []
    for _, _, base in JSON_ROUTES:
        text = json.dumps(base)
        key, value = next(iter(base.items()))
        made += [
            ("text/plain", text.encode(), "text/plain"),
            ("form type", text.encode(), "application/x-www-form-urlencoded"),
            ("no content type", text.encode(), None),
            ("json-ish type", text.encode(), "application/jsonx"),
            (
                "duplicate key",
                text.replace("{", f'{{"{key}": {json.dumps(value)}, ', 1).encode(),
                "application/json",
            ),
            ("lone surrogate", text.replace("}", ', "x": "\\ud800"}').encode(), "application/json"),
            (
                "lone low surrogate",
                text.replace("}", ', "x": "a\\udfffb"}').encode(),
                "application/json",
            ),
            ("NUL", text.replace("}", ', "x": "a\\u0000"}').encode(), "application/json"),
            ("NUL in a key", text.replace("{", '{"\\u0000": 1, ', 1).encode(), "application/json"),
            (
                "huge integer",
                text.replace("}", f', "x": {"9" * 100}}}').encode(),
                "application/json",
            ),
            ("1e999", text.replace("}", ', "x": 1e999}').encode(), "application/json"),
            ("NaN", text.replace("}", ', "x": NaN}').encode(), "application/json"),
            (
                "deep",
                text.replace("}", ', "x": ' + "[" * 40 + "]" * 40 + "}").encode(),
                "application/json",
            ),
            ("very deep", b"[" * 5000 + b"]" * 5000, "application/json"),
            (
                "over the limit",
                text.replace("}", f', "x": "{"a" * MAX_BODY_BYTES}"}}').encode(),
                "application/json",
            ),
            ("not UTF-8", text.encode().replace(b"{", b"{\xff", 1), "application/json"),
            ("UTF-16", text.encode("utf-16"), "application/json"),
            ("empty", b"", "application/json"),
            ("an array", json.dumps([base]).encode(), "application/json"),
            ("a string", json.dumps(text).encode(), "application/json"),
            ("null", b"null", "application/json"),
        ]
        for _ in range(count):
            cut = rng.randrange(1, len(text))  # a proper prefix of an object is never JSON
            made.append((f"cut at {cut}", text[:cut].encode(), "application/json"))
            noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
            made.append(("random bytes", noise, "application/json"))
            spot = rng.randrange(len(text))
            made.append(
                (
                    f"garbage at {spot}",
                    (text[:spot] + "\x01}{" + text[spot:]).encode(),
                    "application/json",
                )
            )
    return made


def test_the_bad_input_corpus_gets_json_4xx_and_changes_nothing(client: FlaskClient) -> None:
    create(client)
    node = node_of(client)
    before = everything(client), node.status.term, node.status.leader_endpoint
    corpus = _corpus(seed=10, count=20)
    statuses: dict[int, int] = {}
    for method, path, _ in JSON_ROUTES:
        for why, body, content_type in corpus:
            headers = {} if content_type is None else {"Content-Type": content_type}
            response = client.open(path, method=method, data=body, headers=headers)
            assert 400 <= response.status_code < 500, (method, path, why, response.data[:200])
            assert response.is_json, (method, path, why)
            assert set(response.get_json()) >= {"error", "message"}, (method, path, why)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    assert len(corpus) * len(JSON_ROUTES) > 500
    assert {400, 413, 415} <= set(statuses)  # the corpus reaches every kind of refusal
    assert (everything(client), node.status.term, node.status.leader_endpoint) == before
    assert client.get("/locks/corpus").status_code == 404  # no lock was taken


def test_the_peer_routes_refuse_the_corpus_with_json_4xx_and_keep_the_term(
    client: FlaskClient,
) -> None:
    node = node_of(client)
    before = everything(client), node.status.term, node.status.leader_endpoint
    for path in ("/_catga/raft", "/_catga/propose", "/_catga/forward"):
        for why, body, content_type in _corpus(seed=11, count=5):
            headers = {"X-Catga-Sender": "http://127.0.0.1:1"}
            if content_type is not None:
                headers["Content-Type"] = content_type
            response = client.post(path, data=body, headers=headers)
            assert 400 <= response.status_code < 500, (path, why, response.data[:200])
            assert response.is_json, (path, why)
    assert (everything(client), node.status.term, node.status.leader_endpoint) == before
