"""The forwarding endpoint: ``POST {url_prefix}/forward`` runs a command on the leader.

Followers' :class:`~catga_sync.transport.forward_client.HttpClusterForwarder` post here. The
request passes the same gate as peer RPC (size limit, signature when a secret is set), then is
decoded and type-checked as a whole (:mod:`catga_sync.transport.forward_wire`); a bad body, an
unknown command or a mistyped field is answered 400 and nothing runs. On the leader the command
runs through the mediator — at most once per idempotency key
(:class:`~catga_sync.forwarding.ForwardingGuard`) and marked as forwarded, so no behavior sends
it on; a follower answers 409 ``not_leader`` naming the leader it knows. Wire format:
``docs/request-forwarding.rst``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from flask import Blueprint, Response, jsonify

from ..coordinator import ClusterCoordinator
from ..errors import CommitTimeoutError, NotLeaderError
from ..forwarding import guard_for, not_leader_error
from ..transport.forward_wire import FORWARD_PATH, decode_forward_request, fingerprint
from ..transport.wire import DEFAULT_URL_PREFIX, normalize_url_prefix
from .blueprint import _ALL_METHODS, PeerGate

if TYPE_CHECKING:
    from ..mediator import Mediator
    from ..runtime.extension import NodeHandle


def create_forwarding_blueprint(
    get_node: Callable[[], NodeHandle | None],
    mediator: Mediator,
    *,
    secret: str | None,
    max_body_bytes: int,
    signature_window: float,
    url_prefix: str = DEFAULT_URL_PREFIX,
    name: str = "catga_forward",
) -> Blueprint:
    """A blueprint serving ``POST {url_prefix}/forward`` for the node ``get_node()`` returns
    (None: not running, 503), running commands through ``mediator``."""
    gate = PeerGate(secret=secret, max_body_bytes=max_body_bytes, signature_window=signature_window)
    prefix = normalize_url_prefix(url_prefix)
    bp = Blueprint(name, __name__, url_prefix=prefix or None)

    @bp.route(FORWARD_PATH, methods=_ALL_METHODS, provide_automatic_options=False)
    def forward() -> tuple[Response, int]:
        body, _sender = gate.body()
        node = get_node()
        if node is None:
            gate.not_running()
        forwarded = decode_forward_request(body, mediator)  # 400 before anything runs
        deadline = time.monotonic() + forwarded.deadline
        if not node.status.is_leader:
            return _not_leader(not_leader_error(ClusterCoordinator.of(node)))
        try:
            ran = guard_for(node).run_once(
                forwarded.name,
                forwarded.idempotency_key,
                fingerprint(forwarded.name, forwarded.payload),
                lambda: mediator.send(
                    forwarded.command,
                    idempotency_key=forwarded.idempotency_key,
                    timeout=max(deadline - time.monotonic(), 0.0),
                    forwarded=True,
                ),
                deadline=deadline,
                encode=lambda result: mediator.encode_result(forwarded.name, result),
            )
        except NotLeaderError as exc:  # lost leadership before the handler ran
            return _not_leader(exc)
        except CommitTimeoutError as exc:
            return jsonify(error="timeout", message=str(exc)), 504
        return jsonify(ran.wire), 200

    gate.install_error_handlers(bp)
    return bp


def _not_leader(exc: NotLeaderError) -> tuple[Response, int]:
    leader = exc.leader_endpoint or exc.leader_id
    return jsonify(error="not_leader", message=str(exc), leader=leader), 409
