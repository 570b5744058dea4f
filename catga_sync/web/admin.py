"""The admin routes of the peer blueprint: membership and leadership, for operators.

``GET {url_prefix}/admin/members``, ``POST`` / ``DELETE {url_prefix}/admin/members``,
``POST {url_prefix}/admin/transfer-leader`` and ``GET {url_prefix}/admin/snapshot`` (a backup,
streamed as the JSON document of :mod:`catga_sync.storage.backup`; wire:
:mod:`catga_sync.transport.admin`). They
are peer routes: checked by the same gate as the Raft RPC (size limit, then the signature with
a cluster secret), so only holders of the secret can change the cluster. Any node answers; a
follower forwards the call to the leader. A bad body gets a JSON 400 (413, 415) and changes
nothing. The engine never imports this module; the peer blueprint mounts it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from flask import Blueprint, Response, jsonify, request

from ..config_values import normalize_or_reason
from ..errors import (
    BackupFileError,
    CatgaError,
    CommitTimeoutError,
    ForwardingError,
    LeadershipTransferError,
    MembershipChangeError,
    NodeNotRunningError,
    NotLeaderError,
    RequestBodyError,
    UsageError,
)
from ..raft import Snapshot
from ..runtime.membership import Members
from ..storage.backup import backup_chunks
from ..transport.admin import (
    ADMIN_MEMBERS_PATH,
    ADMIN_SNAPSHOT_PATH,
    ADMIN_TRANSFER_PATH,
    HEADER_FORWARDED,
)
from .bodies import parse_json, require_json_content_type

__all__ = ["ADD_TIMEOUT", "AdminNode", "register_admin_routes"]

ADD_TIMEOUT = 60.0
"""Seconds an add waits by default: a learner may have a whole log to fetch before promotion."""
MAX_TIMEOUT = 600.0

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class AdminNode(Protocol):
    """What the admin routes use of a node (:class:`~catga_sync.runtime.RaftNode` has it)."""

    def members_document(
        self, *, forward: bool = True, timeout: float | None = None
    ) -> dict[str, Any]: ...

    def add_member(
        self,
        endpoint: str,
        *,
        voter: bool = True,
        timeout: float | None = None,
        forward: bool = True,
    ) -> Members: ...

    def remove_member(
        self, endpoint: str, *, timeout: float | None = None, forward: bool = True
    ) -> Members: ...

    def move_leadership(
        self, to: str | None = None, *, timeout: float | None = None, forward: bool = True
    ) -> str: ...

    def backup_snapshot(
        self, *, timeout: float | None = None, forward: bool = True
    ) -> Snapshot: ...


ReadBody = Callable[[tuple[str, ...]], tuple[bytes, str]]
"""The peer gate's check of a request (method, size, signature); returns the body."""


def register_admin_routes(
    bp: Blueprint, read: ReadBody, get_node: Callable[[], AdminNode | None]
) -> None:
    """Add the admin routes to the peer blueprint ``bp``."""

    def node_or_503() -> AdminNode:
        node = get_node()
        if node is None:
            raise NodeNotRunningError(
                "This node is not running (not started yet, or stopping); ask another node"
            )
        return node

    @bp.route(ADMIN_MEMBERS_PATH, methods=_ALL_METHODS, provide_automatic_options=False)
    def members() -> tuple[Response, int]:
        raw, _sender = read(("GET", "POST", "DELETE"))
        forward = request.headers.get(HEADER_FORWARDED) != "1"
        try:
            if request.method == "GET":
                local = request.args.get("local", "").lower() in ("1", "true", "yes")
                node = node_or_503()
                return jsonify(node.members_document(forward=forward and not local)), 200
            if request.method == "POST":
                body = _object(raw, {"endpoint", "voter", "timeout"})
                endpoint = _endpoint(body, "endpoint")
                voter = body.get("voter", True)
                if not isinstance(voter, bool):
                    raise _bad(f'"voter" must be true or false, not {voter!r}')
                timeout = _timeout(body, ADD_TIMEOUT)
                added = node_or_503().add_member(
                    endpoint, voter=voter, timeout=timeout, forward=forward
                )
                return jsonify(added.to_json()), 200
            body = _object(raw, {"endpoint", "timeout"})
            endpoint = _endpoint(body, "endpoint")
            removed = node_or_503().remove_member(
                endpoint, timeout=_timeout(body, None), forward=forward
            )
            return jsonify(removed.to_json()), 200
        except RequestBodyError as exc:
            return _error(exc.status, exc.code, str(exc))
        except CatgaError as exc:
            return _refusal(exc)

    @bp.route(ADMIN_TRANSFER_PATH, methods=_ALL_METHODS, provide_automatic_options=False)
    def transfer_leader() -> tuple[Response, int]:
        raw, _sender = read(("POST",))
        forward = request.headers.get(HEADER_FORWARDED) != "1"
        try:
            body = _object(raw, {"to", "timeout"}) if raw.strip() else {}
            to = None if body.get("to") is None else _endpoint(body, "to")
            leader = node_or_503().move_leadership(
                to, timeout=_timeout(body, None), forward=forward
            )
            return jsonify(leader=leader), 200
        except RequestBodyError as exc:
            return _error(exc.status, exc.code, str(exc))
        except CatgaError as exc:
            return _refusal(exc)

    @bp.route(ADMIN_SNAPSHOT_PATH, methods=_ALL_METHODS, provide_automatic_options=False)
    def snapshot() -> Response | tuple[Response, int]:
        raw, _sender = read(("GET",))
        forward = request.headers.get(HEADER_FORWARDED) != "1"
        try:
            if raw.strip():
                raise _bad("GET snapshot takes no body")
            if request.args:
                raise _bad(f"GET snapshot takes no query parameters, got {sorted(request.args)}")
            taken = node_or_503().backup_snapshot(forward=forward)
        except RequestBodyError as exc:
            return _error(exc.status, exc.code, str(exc))
        except CatgaError as exc:
            return _refusal(exc)
        headers = {"Cache-Control": "no-store", "X-Catga-Snapshot-Index": str(taken.meta.index)}
        return Response(backup_chunks(taken), mimetype="application/json", headers=headers)


def _object(raw: bytes, allowed: set[str]) -> dict[str, Any]:
    require_json_content_type()
    shape = "a JSON object with " + ", ".join(f'"{k}"' for k in sorted(allowed))
    value = parse_json(raw, shape=shape)
    if not isinstance(value, dict):
        raise _bad(f"The body must be {shape}, not {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _bad(f"Unknown key(s) {unknown}: the body takes {sorted(allowed)}")
    return value


def _endpoint(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _bad(f'"{key}" is required: the node\'s endpoint, such as http://node4:5000')
    try:
        return normalize_or_reason(value)
    except ValueError as exc:
        raise _bad(
            f'"{key}" {value!r} is not an endpoint ({exc}); write http://host:port'
        ) from None


def _timeout(body: dict[str, Any], default: float | None) -> float | None:
    value = body.get("timeout", default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 600:
        raise _bad(f'"timeout" must be a number of seconds above 0 and at most 600, not {value!r}')
    return float(value)


def _bad(message: str) -> RequestBodyError:
    return RequestBodyError(400, "bad_request", message)


def _error(status: int, code: str, message: str, **extra: Any) -> tuple[Response, int]:
    return jsonify(error=code, message=message, **extra), status


def _refusal(exc: CatgaError) -> tuple[Response, int]:
    """The answer to a change that was refused or did not finish (the state is as it was, or
    as far as the change got: the membership in the answer of a later GET says)."""
    if isinstance(exc, NotLeaderError):
        return _error(409, "not_leader", str(exc), leader=exc.leader_endpoint or exc.leader_id)
    if isinstance(exc, MembershipChangeError):
        return _error(409, "membership_change", str(exc))
    if isinstance(exc, LeadershipTransferError):
        return _error(400, "leadership_transfer", str(exc))
    if isinstance(exc, CommitTimeoutError):
        return _error(504, "commit_timeout", str(exc))
    if isinstance(exc, NodeNotRunningError):
        return _error(503, "not_running", str(exc))
    if isinstance(exc, ForwardingError):
        return _error(502, "leader_unreachable", str(exc))
    if isinstance(exc, BackupFileError):
        return _error(502, "bad_snapshot", str(exc))
    if isinstance(exc, UsageError):
        return _error(409, "no_snapshot", str(exc))
    return _error(500, "admin_failed", f"{type(exc).__name__}: {exc}")
