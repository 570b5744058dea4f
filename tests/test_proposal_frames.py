"""Forwarded proposals as peer frames: each thread of a follower proposes on one open POST.

A leader on the embedded server offers frames on its ``/propose`` answers; the follower's
client then sends every later proposal of that thread as a frame, answered in order with what
a request would have got — an outcome, a refusal naming the leader, a bad body's 400 — and
the exchange goes on after each. Without the offer, or with frames off, one request each.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
from _peer_support import CountingApp, RecordingReceiver, peer_app, serve, serve_counted

from catga_sync.errors import CommitTimeoutError, NotLeaderError
from catga_sync.transport.http11 import PeerConnection
from catga_sync.transport.proposals import PROPOSE_PATH, ProposalClient
from catga_sync.transport.signing import peer_post_headers

ME = "http://127.0.0.1:5000"
PATH = f"/_catga{PROPOSE_PATH}"


class LeadingReceiver(RecordingReceiver):
    """A leader that appends each proposal at the next index, after ``commit_seconds``; with
    ``fail_with`` set it raises that instead (a refusal, as a node that lost its leadership
    or timed out would)."""

    def __init__(self, raft_id: str) -> None:
        super().__init__(raft_id)
        self.proposals: list[bytes] = []
        self.commit_seconds = 0.0
        self.fail_with: Exception | None = None
        self._lock = threading.Lock()

    def propose_forwarded(
        self, data: bytes, *, timeout: float | None = None
    ) -> tuple[int, int, Any]:
        time.sleep(self.commit_seconds)
        if self.fail_with is not None:
            raise self.fail_with
        with self._lock:
            self.proposals.append(data)
            index = len(self.proposals)
        return index, 3, {"echo": data.decode(), "on": date(2026, 12, 2)}


@pytest.fixture
def leader(secret: str | None) -> Iterator[tuple[LeadingReceiver, CountingApp, str]]:
    receiver = LeadingReceiver("placeholder")
    with serve_counted(receiver, secret) as (app, url):
        yield receiver, app, url


def _client(secret: str | None, **kw: Any) -> ProposalClient:
    return ProposalClient(
        sender_id=ME,
        sender_name="me",
        secret=secret,
        url_prefix="/_catga",
        connect_timeout=2.0,
        **kw,
    )


def test_a_thread_proposes_on_one_request_once_the_leader_offers_frames(
    leader: tuple[LeadingReceiver, CountingApp, str], secret: str | None
) -> None:
    receiver, app, leader_id = leader
    client = _client(secret)
    answers = [client.forward(leader_id, b"c%d" % k, 5.0) for k in range(1, 7)]
    assert app.requests == 2  # the first proposal, then one framed request for five
    assert client._route(leader_id, PATH).state == "working"
    assert receiver.proposals == [b"c%d" % k for k in range(1, 7)]
    # The outcome went through the app's JSON provider (a date as jsonify writes it).
    on = "Wed, 02 Dec 2026 00:00:00 GMT"
    assert answers == [(k, 3, {"result": {"echo": f"c{k}", "on": on}}) for k in range(1, 7)]


def test_threads_propose_each_on_its_own_exchange_and_get_their_own_answers(
    leader: tuple[LeadingReceiver, CountingApp, str], secret: str | None
) -> None:
    receiver, app, leader_id = leader
    client = _client(secret)
    client.forward(leader_id, b"first", 5.0)  # its answer offers frames
    answers: dict[int, list[tuple[int, str]]] = {}
    errors: list[BaseException] = []

    def propose(thread: int) -> None:
        try:
            for k in range(20):
                index, _, outcome = client.forward(leader_id, b"t%d-%d" % (thread, k), 5.0)
                answers.setdefault(thread, []).append((index, outcome["result"]["echo"]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=propose, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(answers) == [0, 1, 2, 3]  # every thread finished
    assert app.requests == 1 + 4  # one framed request per thread
    for thread, got in answers.items():
        assert [echo for _, echo in got] == [f"t{thread}-{k}" for k in range(20)]
        for index, echo in got:  # each answer is the one for that thread's own proposal
            assert receiver.proposals[index - 1] == echo.encode()


@pytest.mark.parametrize(
    "refusal",
    [
        NotLeaderError("http://127.0.0.1:5999", "http://127.0.0.1:5999"),  # 409 not_leader
        CommitTimeoutError("not applied within 1.00s (the test)"),  # 504 commit_timeout
    ],
    ids=["not-leader", "commit-timeout"],
)
def test_a_refusal_in_a_frame_is_raised_and_the_exchange_goes_on(
    leader: tuple[LeadingReceiver, CountingApp, str], secret: str | None, refusal: Exception
) -> None:
    receiver, app, leader_id = leader
    client = _client(secret)
    client.forward(leader_id, b"one", 5.0)
    assert client.forward(leader_id, b"two", 5.0)[0] == 2  # framed
    receiver.fail_with = refusal
    with pytest.raises(type(refusal)) as refused:
        client.forward(leader_id, b"three", 5.0)
    if isinstance(refusal, NotLeaderError):
        assert refused.value.leader_endpoint == "http://127.0.0.1:5999"  # type: ignore[attr-defined]
    else:
        assert "the test" in str(refused.value)
    receiver.fail_with = None
    assert client.forward(leader_id, b"four", 5.0)[0] == 3
    assert app.requests == 2
    assert receiver.proposals == [b"one", b"two", b"four"]


def test_a_bad_proposal_frame_gets_a_400_and_nothing_is_proposed(
    leader: tuple[LeadingReceiver, CountingApp, str], secret: str | None
) -> None:
    receiver, _, leader_id = leader
    port = int(leader_id.rsplit(":", 1)[1])
    connection = PeerConnection("127.0.0.1", port, https=False, timeout=5.0)
    opening = peer_post_headers(secret, PATH, b"", ME, "me", time.time())
    try:
        for body, error in (
            (b"not json", "malformed_json"),
            (b'{"protocol": 1, "data": "", "timeout": 1}', "invalid_proposal"),
        ):
            headers = peer_post_headers(secret, PATH, body, ME, "me", time.time())
            status, answer, _ = connection.exchange(PATH, body, headers, opening)
            assert status == 400, answer
            assert json.loads(answer)["error"] == error
    finally:
        connection.close()
    assert receiver.proposals == []


@pytest.mark.parametrize("embedded", [True, False], ids=["frames-off", "plain-server"])
def test_without_frames_every_proposal_is_a_request_of_its_own(embedded: bool) -> None:
    """With PeerFrames false, or on a server that does not stream both ways (never offered)."""
    receiver = LeadingReceiver("placeholder")
    app = CountingApp(peer_app(lambda: receiver, secret=None))
    with serve(app, embedded=embedded) as server:  # type: ignore[arg-type]
        receiver._raft_id = leader_id = f"http://127.0.0.1:{server.port}"
        client = _client(None, frames=not embedded)
        for k in range(4):
            assert client.forward(leader_id, b"c%d" % k, 5.0)[0] == k + 1
    assert app.requests == 4
    assert client._route(leader_id, PATH).state == "unknown"


def test_a_slow_first_commit_does_not_turn_frames_off(
    leader: tuple[LeadingReceiver, CountingApp, str], secret: str | None
) -> None:
    """The leader sends the head as it takes the opening: a first framed proposal that takes
    longer to commit than the client waits for a head still finds frames working."""
    receiver, app, leader_id = leader
    client = _client(secret)
    client.connect_timeout = 0.3
    client.forward(leader_id, b"one", 5.0)
    receiver.commit_seconds = 1.3  # longer than the head wait (HEAD_WAIT_MIN) too
    assert client.forward(leader_id, b"two", 5.0)[0] == 2
    assert client._route(leader_id, PATH).state == "working"
    assert app.requests == 2


def test_frames_open_on_a_connection_stay_open_whatever_another_thread_learnt(
    leader: tuple[LeadingReceiver, CountingApp, str], secret: str | None
) -> None:
    """A request on a connection with frames open would be read as a frame: once another
    thread turned the route's frames off, this one's exchange still goes on as frames."""
    receiver, app, leader_id = leader
    client = _client(secret)
    client.forward(leader_id, b"one", 5.0)
    client.forward(leader_id, b"two", 5.0)  # frames open on this thread's connection
    route = client._route(leader_id, PATH)
    route._off("another thread's opening was refused (the test)")
    assert client.forward(leader_id, b"three", 5.0)[0] == 3
    assert route.state == "off"  # what the other thread learnt holds for new connections
    assert app.requests == 2
    assert receiver.proposals == [b"one", b"two", b"three"]


def test_a_frame_over_the_body_limit_gets_a_413_and_ends_the_exchange() -> None:
    receiver = LeadingReceiver("placeholder")
    app = peer_app(lambda: receiver, secret=None, max_body_bytes=1024)
    with serve(app, embedded=True) as server:
        connection = PeerConnection("127.0.0.1", server.port, https=False, timeout=5.0)
        opening = peer_post_headers(None, PATH, b"", ME, "me", time.time())
        body = json.dumps({"protocol": 1, "data": "x" * 2000, "timeout": 1}).encode()
        headers = peer_post_headers(None, PATH, body, ME, "me", time.time())
        try:
            status, answer, _ = connection.exchange(PATH, body, headers, opening)
            assert status == 413, answer
            assert json.loads(answer)["error"] == "payload_too_large"
            # The peer ended the exchange: an end of stream, or a reset once it stopped lingering.
            with pytest.raises((http.client.HTTPException, OSError)):
                connection.exchange(PATH, b"{}", headers, opening)
        finally:
            connection.close()
    assert receiver.proposals == []
