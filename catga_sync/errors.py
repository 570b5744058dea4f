"""Every public error catga_sync raises, in one place (``from catga_sync import ...`` too).

All derive from :class:`CatgaError`, and from the builtin they resemble, so callers can catch
either; conditions a caller may need to tell apart have types of their own. Each message says
what happened and what to do next.
"""

from __future__ import annotations

__all__ = [
    "AlreadyRegisteredError",
    "BackupFileError",
    "CatgaError",
    "ClientAuthError",
    "CommandError",
    "CommitTimeoutError",
    "ConfigError",
    "ForkedProcessError",
    "ForwardingError",
    "IdempotencyKeyReusedError",
    "InvalidCommandError",
    "InvalidLockRequestError",
    "InvalidMessageError",
    "InvalidRequestIdError",
    "LeaderUnreachableError",
    "LeadershipTransferError",
    "LockNotAcquiredError",
    "LockNotHeldError",
    "MembershipChangeError",
    "NoLeaderError",
    "NodeNotRunningError",
    "NotLeaderError",
    "NotRegisteredError",
    "PeerAuthError",
    "ProposalDroppedError",
    "RegistrationError",
    "RequestBodyError",
    "RequestExpiredError",
    "StaleTokenError",
    "StorageError",
    "StorageUnavailableError",
    "UnknownCommandError",
    "UnknownCommandTypeError",
    "UsageError",
]


class CatgaError(Exception):
    """Root of every error raised by catga_sync."""


class ConfigError(CatgaError, ValueError):
    """A configuration value is missing, malformed or unsafe."""


class InvalidMessageError(CatgaError, ValueError):
    """A peer message failed validation; the node's state was not touched."""


class PeerAuthError(CatgaError, PermissionError):
    """A peer request was not signed, or not signed with this cluster's secret, or its timestamp
    lies outside the signature window; it was refused and changed nothing."""


class ClientAuthError(CatgaError, PermissionError):
    """A node refused a client request (401): the nodes have a client token and the request
    did not carry it. Give the :class:`~catga_sync.client.ClusterClient` the cluster's
    ``ClientToken`` (``secret=``); it is not the peers' secret."""


class ProposalDroppedError(CatgaError):
    """The Raft core refused a proposal; nothing was appended to the log."""


class NotLeaderError(ProposalDroppedError):
    """This node is not the leader, so it cannot take the request.

    ``leader_id`` and ``leader_endpoint`` name the current leader when one is known; send the
    request there, or use the forward-to-leader behavior.
    """

    def __init__(
        self,
        leader_id: str | None = None,
        leader_endpoint: str | None = None,
        message: str | None = None,
    ) -> None:
        self.leader_id = leader_id
        self.leader_endpoint = leader_endpoint
        if message is None:
            shown = leader_endpoint or leader_id or "none"
            message = f"This node is not the leader. Leader: {shown}"
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.leader_id, self.leader_endpoint, str(self)))


class NoLeaderError(NotLeaderError):
    """No leader is known right now (an election is under way or there is no quorum)."""


class LeadershipTransferError(CatgaError, ValueError):
    """A leadership transfer was asked for an unknown, non-voting or otherwise invalid target."""


class MembershipChangeError(CatgaError, ValueError):
    """A membership change was refused (another is pending, or the change makes no sense)."""


class CommitTimeoutError(CatgaError, TimeoutError):
    """A proposal was not applied in time; its outcome is unknown.

    Retrying with the same request id is safe: the state machine applies it at most once.
    ``request_id`` names it, when there is one.
    """

    def __init__(self, message: str = "", request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.request_id))


class LockNotAcquiredError(CatgaError, TimeoutError):
    """A distributed lock could not be acquired within the wait."""


class ForwardingError(CatgaError):
    """A request could not be forwarded to the leader."""


class LeaderUnreachableError(ForwardingError, ConnectionError):
    """The leader could not be reached, or was not running; retried until the deadline.

    ``maybe_delivered`` is False when the request certainly did not reach a handler (the
    connection was refused, the node answered that it is not running).
    """

    def __init__(self, message: str, *, maybe_delivered: bool = True) -> None:
        super().__init__(message)
        self.maybe_delivered = maybe_delivered


class IdempotencyKeyReusedError(CatgaError, ValueError):
    """An idempotency key already recorded for a different command or payload. Use a new key for
    every distinct command; reuse a key only to retry the very same command."""


class StorageError(CatgaError):
    """The node's persistent state could not be read or written."""


class BackupFileError(CatgaError, ValueError):
    """A backup snapshot file is damaged, truncated or not a catga snapshot (its checksum, its
    format or its fields are wrong): nothing was restored from it. Take a new backup."""


class StorageUnavailableError(StorageError):
    """The database server could not be reached (restarted, unreachable, the connection
    broke): nothing was written, or the outcome of the last commit is unknown. A running node
    stops acknowledging and retries the same write, which is idempotent, until it is back."""


class InvalidLockRequestError(CatgaError, ValueError):
    """A lock request is malformed (its name, TTL, owner, token or wait); nothing changed."""


class LockNotHeldError(CatgaError, RuntimeError):
    """The lock is not held with this fencing token: it was released, it expired, or it went to
    another holder since. Work done after the lease was lost may be stale; a fenced resource
    refuses it (see :mod:`catga_sync.fencing`)."""


class StaleTokenError(LockNotHeldError):
    """A fenced resource refused a write: a holder with a newer fencing token wrote since, so
    this holder's lease was lost. Do not retry with the same token; acquire the lock again."""


# -- using the API where it cannot work -----------------------------------------------------


class NodeNotRunningError(CatgaError, RuntimeError):
    """The node was not started yet, was stopped, or failed: nothing was done. Start it, or
    create a new node (a stopped node cannot be started again)."""


class ForkedProcessError(NodeNotRunningError):
    """The node was created in another process and this is a forked child of it: its threads
    and connections did not survive the fork. Create and start the node after forking."""


class NotRegisteredError(CatgaError, LookupError):
    """What the call names (a state machine, a table, an extension, a Flask app's cluster) was
    not registered where it was looked for."""


class AlreadyRegisteredError(CatgaError, ValueError):
    """Something with that name (a state machine, a singleton task, a gated job, the Flask
    extension on an app) is already registered; give each a unique name, or register it once."""


class UsageError(CatgaError, RuntimeError):
    """A call made where it cannot work (a state machine registered after start, a behavior
    outside ``Mediator.send``, a forwarder without a mediator); nothing was done."""


class InvalidRequestIdError(CatgaError, ValueError):
    """A request id (an idempotency key) is not a non-empty string of at most 200 characters."""


# -- commands and the mediator --------------------------------------------------------------


class CommandError(CatgaError):
    """A command failed on the leader with an error type this process cannot rebuild."""

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        super().__init__(f"{type_name}: {message}")


class UnknownCommandError(CatgaError, LookupError):
    """The command names a state machine or method that is not registered (or not a command)."""


class RequestExpiredError(CatgaError):
    """A retried request id whose outcome the cluster no longer remembers: its client had
    acknowledged it, or its session expired. Whether it ran is unknown; do not retry it."""


class UnknownCommandTypeError(CatgaError, LookupError):
    """A command type or name that is not registered with this mediator, or has no handler."""


class InvalidCommandError(CatgaError, ValueError):
    """A payload that does not make a valid command (missing, unknown or mistyped fields), or a
    command or result that cannot travel as JSON."""


class RegistrationError(CatgaError, TypeError):
    """A command or handler registration that cannot work (not a dataclass, a name taken...)."""


class RequestBodyError(CatgaError, ValueError):
    """An HTTP request body refused at the edge, before anything ran: ``status`` is the answer
    (400 malformed, 413 too large, 415 not JSON), ``code`` its machine-readable error, and
    ``headers`` what the answer must carry (``Connection: close`` when the body was not read)."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = dict(headers or {})

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.status, self.code, str(self), self.headers))
