"""Cluster configuration: the guide's ``Cluster`` settings as one frozen, validated object.

A :class:`ClusterConfig` is built directly or loaded from one of three sources, each under the
names that source is used to: the guide's ``appsettings.json`` ``"Cluster"`` section
(:meth:`ClusterConfig.from_mapping`), its environment form ``Cluster__LocalNodeEndpoint``
(:meth:`ClusterConfig.from_env`) and Flask config keys ``CATGA_CLUSTER_*``
(:meth:`ClusterConfig.from_flask_config`). Everything is checked once, at construction, so a
mistake fails at start with a :class:`~catga_sync.errors.ConfigError` that names the key and the
fix, rather than as a cluster that never elects a leader.

A node's Raft identity is its normalized local endpoint (:func:`normalize_endpoint`); its
``node_id`` is the human name used for storage rows, logs and health output.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from .config_settings import (
    _BY_FOLDED,
    _BY_NAME,
    SETTINGS,
    Setting,
    _coerce,
    _fold,
    _is_int,
    _label,
    _put_once,
)
from .config_values import (
    NODE_ID_RE,
    derive_node_id,
    normalize_endpoint,
    normalize_or_reason,
    parse_duration,
)
from .config_values import (
    format_duration as _fmt,
)
from .errors import ConfigError
from .raft import Membership, RaftConfig
from .timeouts import Timeouts

if TYPE_CHECKING:  # TLS between nodes (issue 12)
    import ssl

    from .tls import TlsClient

__all__ = [
    "ELECTION_TIMEOUT_FLOOR",
    "HEARTBEAT_INTERVAL_FLOOR",
    "SETTINGS",
    "ClusterConfig",
    "Setting",
    "Timeouts",
    "derive_node_id",
    "normalize_endpoint",
    "parse_duration",
]

logger = logging.getLogger("catga_sync.config")

ELECTION_TIMEOUT_FLOOR = timedelta(milliseconds=100)
"""The guide's lowest election timeout ("Troubleshooting: not below 100ms")."""
HEARTBEAT_INTERVAL_FLOOR = timedelta(milliseconds=25)
"""The guide's lowest heartbeat interval ("not below 25ms")."""
ELECTION_TIMEOUT_CEILING = timedelta(seconds=60)
"""Above this an election timeout is almost surely milliseconds written as seconds."""
MIN_DERIVED_TICK = timedelta(milliseconds=5)
"""A derived tick never goes below this: finer ticks cost CPU and buy nothing under the GIL."""
MIN_TICK_INTERVAL = timedelta(milliseconds=1)
MIN_SIGNATURE_WINDOW = timedelta(seconds=1)
MIN_MESSAGE_BYTES = 64 << 10
MAX_PIPELINE_DEPTH = 16
"""The most peer requests in flight to one peer (each costs a thread and a connection)."""
SHORT_SECRET = 16
"""Secrets shorter than this draw a warning: HMAC is only as strong as its key."""

_TABLE_PREFIX_RE = re.compile(r"[a-z_][a-z0-9_]{0,31}")
_URL_PREFIX_RE = re.compile(r"(/[A-Za-z0-9._~-]+)+")
_PASSWORD_RE = re.compile(r"(://[^/@:]*:)[^/@]*@")


_Put = Callable[[str, object], None]


# --------------------------------------------------------------------------------------------
# The configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """One node's cluster settings, validated at construction.

    Durations accept a ``timedelta``, a number of seconds or a duration string
    (:func:`parse_duration`); every other field takes its annotated type. ``members`` may list
    the local endpoint or not; it is stored without it (:attr:`voters` adds it back).
    """

    local_node_endpoint: str = ""
    """This node's URL, e.g. ``http://localhost:5000``; stored normalized. It is the node's
    Raft id. Required: the default (empty) raises :class:`~catga_sync.errors.ConfigError`."""
    members: tuple[str, ...] = ()
    """The other members' endpoints, normalized, without the local one."""
    election_timeout: timedelta = timedelta(milliseconds=150)
    """A follower that hears no leader for this long (randomized in [T, 2T)) starts an election."""
    heartbeat_interval: timedelta = timedelta(milliseconds=50)
    """How often the leader sends heartbeats; less than half the election timeout."""
    persistent_state_path: str | None = None
    """None: in-memory (lost on restart); a directory: one SQLite file per node; a SQLAlchemy
    URL (contains ``://``) such as ``postgresql+psycopg://...``."""
    node_id: str = ""
    """The human name of this node (storage rows, logs, health). Empty: derived from the
    endpoint as ``host-port``."""
    secret: str | None = field(default=None, repr=False)
    """Cluster secret for HMAC-signed peer requests; None leaves the peer API open."""
    client_token: str | None = field(default=None, repr=False)
    """The bearer token a :class:`~catga_sync.client.ClusterClient` must send to the client
    routes (``{url_prefix}/client``); None leaves them open. Not the peers' :attr:`secret`."""
    table_prefix: str = "catga_"
    """Prefix of the SQL tables (lowercase letters, digits, underscores)."""
    sqlite_synchronous: str = "FULL"
    """SQLite ``PRAGMA synchronous``: FULL (durable against power loss) or NORMAL (faster)."""
    url_prefix: str = "/_catga"
    """Where the peer RPC blueprint is mounted."""
    max_message_bytes: int = 8 << 20
    """Largest peer request body accepted (larger gets 413)."""
    pipeline_depth: int = 1
    """Peer requests in flight to one peer at once (each on its own connection); 1: the next
    batch leaves when the last one is answered."""
    peer_frames: bool = True
    """Send a peer that offers them every batch as a frame on one open request (its answers
    say so); False: one request per batch, as to a peer that does not."""
    signature_window: timedelta = timedelta(seconds=30)
    """A signed request older or newer than this (by the receiver's clock) is refused."""
    tick_interval: timedelta | None = None
    """The Raft core's tick. None: heartbeat_interval / 5, but not below 5 ms."""
    switch_interval: float | None = 0.001
    """``sys.setswitchinterval`` the node applies so busy threads cannot starve its timer
    (seconds); None leaves Python's default (0.005)."""
    snapshot_every: int = 10_000
    """Applied entries between snapshots."""
    background_snapshot_after: timedelta | None = timedelta(milliseconds=50)
    """A snapshot that took at least this long on the Raft loop makes the next ones be taken
    in a forked child (copy-on-write, as Redis's BGSAVE), so encoding a large state does not
    stop the node. 0: every snapshot in a child; None: never (nor where ``os.fork`` is
    missing)."""
    autostart: bool = True
    """Start the node when the Flask extension is initialised."""
    join: bool = False
    """Join a running cluster: start with no membership of its own, never campaign, and wait
    to be added (``catga members add``). Without it, :attr:`members` is the bootstrap
    configuration, and once the log holds a membership change, the replicated one wins."""
    # -- TLS between nodes (issue 12; docs/security.rst) ---------------------------------------
    tls_cert_file: str | None = None
    """This node's PEM certificate: it serves its https endpoint and is its client certificate."""
    tls_key_file: str | None = None
    """The certificate's PEM private key (None: it is in :attr:`tls_cert_file`)."""
    tls_ca_file: str | None = None
    """The CA that peers' certificates must chain to, for every outgoing request (None: the
    system's store); with :attr:`tls_require_client_cert`, also what clients must chain to."""
    tls_require_client_cert: bool = False
    """Mutual TLS: the server refuses a client without a certificate from :attr:`tls_ca_file`."""

    def __post_init__(self) -> None:
        # Frozen: normalized values are stored through object.__setattr__, once, here.
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        local = self._check_local_endpoint()
        put("local_node_endpoint", local)
        put("members", self._check_members(local))
        put("node_id", self._check_node_id(local))
        self._check_durations(put)
        put("persistent_state_path", self._check_state_path())
        self._check_strings(put)
        self._check_numbers(put)
        self._check_tls(put)
        self._warn_about_size()

    # -- validation, one concern per method ---------------------------------------------------

    def _check_local_endpoint(self) -> str:
        label = _label("local_node_endpoint")
        value = self.local_node_endpoint
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ConfigError(
                f"{label} is required: set it to this node's URL, e.g. http://localhost:5000"
            )
        try:
            return normalize_or_reason(value)
        except ValueError as exc:
            raise ConfigError(
                f"{label} {value!r} is not a valid endpoint: {exc}. "
                "Set it to this node's URL as http://host:port, e.g. http://localhost:5000."
            ) from None

    def _check_members(self, local: str) -> tuple[str, ...]:
        label = _label("members")
        given = self.members
        if given is None:
            return ()
        if isinstance(given, (str, bytes)) or not isinstance(given, Iterable):
            raise ConfigError(
                f"{label} must be a list of endpoint URLs, got {type(given).__name__}: "
                'e.g. ["http://localhost:5001", "http://localhost:5002"]'
            )
        seen: dict[str, object] = {}
        for i, member in enumerate(given):
            try:
                endpoint = normalize_or_reason(member)
            except ValueError as exc:
                raise ConfigError(
                    f"Cluster:Members:{i} (members[{i}]) {member!r} is not a valid endpoint: "
                    f"{exc}. Write each member as http://host:port, e.g. http://localhost:5001."
                ) from None
            if endpoint in seen:
                raise ConfigError(
                    f"{label} lists {endpoint} twice ({seen[endpoint]!r} and {member!r} are the "
                    "same endpoint once normalized): remove the duplicate"
                )
            seen[endpoint] = member
        # The guide's lists leave the local endpoint out; ours may include it. Same meaning.
        return tuple(endpoint for endpoint in seen if endpoint != local)

    def _check_node_id(self, local: str) -> str:
        label = _label("node_id")
        value = self.node_id
        if value is None or value == "":
            value = derive_node_id(local)
            if not NODE_ID_RE.fullmatch(value):
                raise ConfigError(
                    f"{label} cannot be derived from {local} (it gives {value!r}, which is too "
                    "long): set it explicitly, e.g. node0"
                )
            return value
        if not isinstance(value, str):
            raise ConfigError(f"{label} must be a string, got {type(value).__name__}")
        if not NODE_ID_RE.fullmatch(value) or value in (".", ".."):
            raise ConfigError(
                f"{label} {value!r} is invalid: use 1 to 255 letters, digits, '.', '_' or '-' "
                "(it names storage rows and files), e.g. node0"
            )
        return value

    def _check_durations(self, put: _Put) -> None:
        durations: dict[str, timedelta] = {}
        for name in ("election_timeout", "heartbeat_interval", "signature_window"):
            durations[name] = _positive_duration(name, getattr(self, name))
            put(name, durations[name])
        election, heartbeat = durations["election_timeout"], durations["heartbeat_interval"]
        if election < ELECTION_TIMEOUT_FLOOR:
            raise ConfigError(
                f"{_label('election_timeout')} is {_fmt(election)}, below the floor of 100 ms: "
                "an election needs time for a vote round trip; use 150 ms (the default) or more"
            )
        if election > ELECTION_TIMEOUT_CEILING:
            raise ConfigError(
                f"{_label('election_timeout')} is {_fmt(election)}, above 60 s: a bare number "
                "means seconds; for milliseconds write 150ms or 00:00:00.150"
            )
        if heartbeat < HEARTBEAT_INTERVAL_FLOOR:
            raise ConfigError(
                f"{_label('heartbeat_interval')} is {_fmt(heartbeat)}, below the floor of 25 ms: "
                "use 50 ms (the default) or about a third of the election timeout"
            )
        if heartbeat * 2 >= election:
            raise ConfigError(
                f"{_label('heartbeat_interval')} is {_fmt(heartbeat)}, not less than half of "
                f"{_label('election_timeout')} ({_fmt(election)}): followers would start "
                "elections between heartbeats; use at most a third of the election timeout "
                "(the guide: 50 ms with 150 ms)"
            )
        if durations["signature_window"] < MIN_SIGNATURE_WINDOW:
            raise ConfigError(
                f"{_label('signature_window')} is {_fmt(durations['signature_window'])}: use at "
                "least 1 s (30 s is the default) so ordinary clock skew does not reject peers"
            )
        if self.tick_interval is not None:
            tick = _positive_duration("tick_interval", self.tick_interval)
            if tick < MIN_TICK_INTERVAL or tick > heartbeat:
                raise ConfigError(
                    f"{_label('tick_interval')} is {_fmt(tick)}: it must be between 1 ms and "
                    f"the heartbeat interval ({_fmt(heartbeat)}); leave it unset to derive it"
                )
            put("tick_interval", tick)
        if self.background_snapshot_after is not None:
            label = _label("background_snapshot_after")
            after = parse_duration(self.background_snapshot_after, key=label)
            if after < timedelta(0):
                raise ConfigError(
                    f"{label} is {_fmt(after)}: use 0 or more (0: every snapshot in a forked "
                    "child), or none to keep snapshots on the Raft loop; the default is 50 ms"
                )
            put("background_snapshot_after", after)

    def _check_state_path(self) -> str | None:
        label = _label("persistent_state_path")
        value = self.persistent_state_path
        if value is None:
            return None
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(
                f"{label} must be a directory or a SQLAlchemy URL, got {value!r}: leave it unset "
                "for in-memory state, or use e.g. ./raft-state"
            )
        if "://" not in value:
            return os.path.expanduser(value)
        from sqlalchemy.engine import make_url  # heavy; only needed for URLs
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(value)
        except (ArgumentError, ValueError):  # ValueError: e.g. a port that is not a number
            raise ConfigError(
                f"{label} {_mask_password(value)!r} is not a valid SQLAlchemy URL: write e.g. "
                "postgresql+psycopg://user:password@host/db, or a directory for SQLite files"
            ) from None
        return value

    def _check_strings(self, put: _Put) -> None:
        secret = self.secret
        if secret is not None:
            if not isinstance(secret, str) or not secret:
                raise ConfigError(
                    f"{_label('secret')} must be a non-empty string: set the same secret on every "
                    "node, or leave it unset to run with an open peer API"
                )
            if len(secret) < SHORT_SECRET:
                logger.warning(
                    "%s is shorter than %d characters; peer signatures are only as strong as "
                    "the secret: use e.g. python -c 'import secrets; print(secrets.token_hex(32))'",
                    _label("secret"),
                    SHORT_SECRET,
                )
        token = self.client_token
        if token is not None:
            if not isinstance(token, str) or not token:
                raise ConfigError(
                    f"{_label('client_token')} must be a non-empty string (the bearer token "
                    "clients send), or unset to leave the client routes open"
                )
            if not token.isprintable() or not token.isascii() or " " in token:
                raise ConfigError(
                    f"{_label('client_token')} must be printable ASCII without spaces (it "
                    "travels in an Authorization: Bearer header)"
                )
            if token == secret:
                raise ConfigError(
                    f"{_label('client_token')} equals {_label('secret')}: give clients a "
                    "token of their own, so a client cannot sign peer requests"
                )
            if len(token) < SHORT_SECRET:
                logger.warning(
                    "%s is shorter than %d characters: use e.g. python -c 'import secrets; "
                    "print(secrets.token_hex(32))'",
                    _label("client_token"),
                    SHORT_SECRET,
                )
        prefix = self.table_prefix
        if not isinstance(prefix, str) or not _TABLE_PREFIX_RE.fullmatch(prefix):
            raise ConfigError(
                f"{_label('table_prefix')} {prefix!r} is invalid: use 1 to 32 lowercase letters, "
                "digits or underscores, starting with a letter or underscore (it is pasted into "
                "table names; PostgreSQL folds case, MySQL on Linux does not), e.g. catga_"
            )
        sync = self.sqlite_synchronous
        if not isinstance(sync, str) or sync.upper() not in ("FULL", "NORMAL"):
            raise ConfigError(
                f"{_label('sqlite_synchronous')} {sync!r} is invalid: use FULL (durable against "
                "power loss, the default) or NORMAL (faster; may lose the last writes on power "
                "loss, which can make a node forget its vote)"
            )
        put("sqlite_synchronous", sync.upper())
        url_prefix = self.url_prefix
        if not isinstance(url_prefix, str) or not _URL_PREFIX_RE.fullmatch(url_prefix):
            raise ConfigError(
                f"{_label('url_prefix')} {url_prefix!r} is invalid: it must start with '/', not "
                "end with '/', and hold only letters, digits and . _ ~ -, e.g. /_catga"
            )

    def _check_numbers(self, put: _Put) -> None:
        size = self.max_message_bytes
        if not _is_int(size) or size < MIN_MESSAGE_BYTES:
            raise ConfigError(
                f"{_label('max_message_bytes')} {size!r} is invalid: use a whole number of bytes "
                f"of at least {MIN_MESSAGE_BYTES} (64 KiB); the default is 8 MiB (8388608)"
            )
        depth = self.pipeline_depth
        if not _is_int(depth) or not 1 <= depth <= MAX_PIPELINE_DEPTH:
            raise ConfigError(
                f"{_label('pipeline_depth')} {depth!r} is invalid: use a whole number of peer "
                f"requests in flight from 1 to {MAX_PIPELINE_DEPTH}; the default is 1"
            )
        every = self.snapshot_every
        if not _is_int(every) or every < 1:
            raise ConfigError(
                f"{_label('snapshot_every')} {every!r} is invalid: use a whole number of applied "
                "entries of at least 1; the default is 10000"
            )
        switch = self.switch_interval
        if switch is not None:
            if isinstance(switch, timedelta):
                switch = switch.total_seconds()
            if (
                isinstance(switch, bool)
                or not isinstance(switch, (int, float))
                or not (0 < switch <= 1)
            ):
                raise ConfigError(
                    f"{_label('switch_interval')} {self.switch_interval!r} is invalid: use a "
                    "number of seconds above 0 and at most 1 (0.001 is the default), or None to "
                    "leave Python's default"
                )
            put("switch_interval", float(switch))
        for name in ("autostart", "join"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"{_label(name)} must be True or False, got {getattr(self, name)!r}"
                )

    def _check_tls(self, put: _Put) -> None:
        from .tls import check_settings  # TLS between nodes (issue 12): the checks are there

        check_settings(self, put, _label)

    @property
    def tls_client(self) -> TlsClient:
        """What this node's outgoing requests verify (TlsCaFile) and present (its certificate)."""
        from .tls import TlsClient

        return TlsClient(self.tls_ca_file, self.tls_cert_file, self.tls_key_file)

    def server_ssl_context(self) -> ssl.SSLContext | None:
        """The context this node serves its endpoint with; None when it serves plain http."""
        if self.tls_cert_file is None:
            return None
        from .tls import server_context

        return server_context(
            self.tls_cert_file, self.tls_key_file, self.tls_ca_file, self.tls_require_client_cert
        )

    def _warn_about_size(self) -> None:
        voters = len(self.members) + 1
        if voters % 2 == 0 and not self.join:  # a joining node's members are not its voters
            logger.warning(
                "The cluster has %d voters (%s): it survives %d failure(s), no more than %d "
                "voter(s) would, and an even count makes split votes likelier; use an odd "
                "number of nodes (3, 5, 7) as the guide advises",
                voters,
                ", ".join(sorted(self.voters)),
                (voters - 1) // 2,
                voters - 1,
            )

    # -- derived values -----------------------------------------------------------------------

    @property
    def raft_id(self) -> str:
        """This node's Raft identity, which is its normalized endpoint."""
        return self.local_node_endpoint

    @property
    def voters(self) -> frozenset[str]:
        """Every voter of the initial configuration (the members and this node)."""
        return frozenset(self.members) | {self.local_node_endpoint}

    @property
    def persistence(self) -> Literal["memory", "directory", "url"]:
        """Where the Raft state lives, read from :attr:`persistent_state_path`."""
        path = self.persistent_state_path
        if path is None:
            return "memory"
        return "url" if "://" in path else "directory"

    @property
    def tick(self) -> timedelta:
        """The core's unit of time. It is :attr:`tick_interval` if set, else
        heartbeat_interval / 5 but not below 5 ms."""
        if self.tick_interval is not None:
            return self.tick_interval
        return max(self.heartbeat_interval / 5, MIN_DERIVED_TICK)

    @property
    def background_snapshot_seconds(self) -> float | None:
        """:attr:`background_snapshot_after` in seconds (None: snapshots stay on the loop)."""
        after = self.background_snapshot_after
        return None if after is None else after.total_seconds()

    @property
    def timeouts(self) -> Timeouts:
        """Every wait derived from the election timeout (:class:`Timeouts`)."""
        return Timeouts.of(self.election_timeout, self.heartbeat_interval, self.tick)

    @property
    def election_ticks(self) -> int:
        """The election timeout in ticks (the core randomizes it in [T, 2T))."""
        return round(self.election_timeout / self.tick)

    @property
    def heartbeat_ticks(self) -> int:
        """The heartbeat interval in ticks (at least one)."""
        return max(1, round(self.heartbeat_interval / self.tick))

    def endpoint_of(self, raft_id: str) -> str:
        """The URL to reach a node by: its Raft id is already its endpoint."""
        return raft_id

    def raft_config(self, **overrides: Any) -> RaftConfig:
        """The core's configuration for this node: ids, initial voters and ticks, and batch
        sizes that fit in :attr:`max_message_bytes` (base64 and JSON add about a third)."""
        defaults: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(RaftConfig)}
        budget = self.max_message_bytes // 2
        params: dict[str, Any] = {
            "node_id": self.raft_id,
            # A joining node knows no voter, itself included: it never campaigns, and learns
            # the membership from the leader's log once added.
            "membership": Membership(voters=frozenset() if self.join else self.voters),
            "election_ticks": self.election_ticks,
            "heartbeat_ticks": self.heartbeat_ticks,
            "max_entries_bytes": min(defaults["max_entries_bytes"], budget),
            "snapshot_chunk_bytes": min(defaults["snapshot_chunk_bytes"], budget),
        }
        params.update(overrides)
        return RaftConfig(**params)

    def __repr__(self) -> str:
        # Never print the secret or a database password (configs end up in logs).
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("secret", "client_token"):
                text = "None" if value is None else "'***'"
            elif f.name == "persistent_state_path" and value is not None:
                text = repr(_mask_password(value))
            else:
                text = repr(value)
            shown.append(f"{f.name}={text}")
        return f"ClusterConfig({', '.join(shown)})"

    # -- loaders ------------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], **overrides: Any) -> ClusterConfig:
        """Load the guide's ``appsettings.json``: the whole document (its ``"Cluster"``
        section is used) or the section itself.

        Keys are matched case-insensitively, in the guide's PascalCase or in snake_case; an
        unknown key is an error, so a typo cannot pass silently. A ``null`` value leaves the
        key at its default. ``overrides`` (Python names and values) win over the mapping.
        """
        if not isinstance(mapping, Mapping):
            raise ConfigError(
                "from_mapping expects a mapping (the parsed appsettings.json, or its Cluster "
                f"section), got {type(mapping).__name__}"
            )
        section: Mapping[str, Any] = mapping
        where = "the Cluster section"
        found = [k for k in mapping if isinstance(k, str) and k.lower() == "cluster"]
        if len(found) > 1:
            raise ConfigError(f"The mapping has several Cluster sections ({found}): keep one")
        if found:
            section = mapping[found[0]]
            if not isinstance(section, Mapping):
                raise ConfigError(
                    f"{found[0]!r} must be an object of settings, got {type(section).__name__}"
                )
        else:
            where = "the mapping (it has no Cluster section, so it was read as the section)"
        raw: dict[str, tuple[str, Any]] = {}
        for key, value in section.items():
            setting = _BY_FOLDED.get(_fold(key)) if isinstance(key, str) else None
            if setting is None:
                known = ", ".join(s.guide for s in SETTINGS)
                raise ConfigError(
                    f"Unknown key {key!r} in {where}. Known keys: {known} "
                    "(or their snake_case names)."
                )
            _put_once(raw, setting, key, value)
        return cls._build(raw, overrides)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ClusterConfig:
        """Load the guide's environment form (``environ`` defaults to ``os.environ``).

        ``Cluster__LocalNodeEndpoint``, ``Cluster__Members__0``, ``Cluster__Members__1``, ...,
        ``Cluster__ElectionTimeout`` and so on, matched case-insensitively as .NET does.
        Member indexes run from 0 without gaps. Other ``Cluster__*`` variables are errors.
        """
        env = os.environ if environ is None else environ
        return cls._build(cls._env_raw(env), overrides)

    @staticmethod
    def _env_raw(env: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
        raw: dict[str, tuple[str, Any]] = {}
        indexed: dict[int, tuple[str, str]] = {}
        for key, value in env.items():
            if not key.lower().startswith("cluster__"):
                continue
            parts = key[len("cluster__") :].split("__")
            setting = _BY_FOLDED.get(_fold(parts[0]))
            if setting is not None and len(parts) == 1:
                _put_once(raw, setting, key, value)
                continue
            if setting is not None and setting.name == "members" and len(parts) == 2:
                index = parts[1]
                if index.isdigit() and index.isascii():
                    if int(index) in indexed:
                        raise ConfigError(
                            f"{indexed[int(index)][0]} and {key} set the same member: keep one"
                        )
                    indexed[int(index)] = (key, value)
                    continue
            known = ", ".join(
                s.env_key + ("__0, __1, ..." if s.name == "members" else "") for s in SETTINGS
            )
            raise ConfigError(f"Unknown environment variable {key}. Known: {known}.")
        if indexed:
            if "members" in raw:
                raise ConfigError(
                    f"Both {raw['members'][0]} and {indexed[min(indexed)][0]} are set: list the "
                    "members one way, Cluster__Members__0, Cluster__Members__1, ..."
                )
            missing = [i for i in range(max(indexed) + 1) if i not in indexed]
            if missing:
                raise ConfigError(
                    f"Cluster__Members__{missing[0]} is missing (found indexes "
                    f"{sorted(indexed)}): number the members from 0 without gaps"
                )
            raw["members"] = (
                "Cluster__Members",
                [indexed[i][1] for i in range(len(indexed))],
            )
        return raw

    @classmethod
    def from_flask_config(cls, config: Mapping[str, Any], **overrides: Any) -> ClusterConfig:
        """Load ``CATGA_CLUSTER_*`` keys from a Flask config, one per field
        (``CATGA_CLUSTER_LOCAL_NODE_ENDPOINT``, ``CATGA_CLUSTER_MEMBERS``, ...).

        Values may be typed (as ``app.config.from_prefixed_env()`` leaves them after its JSON
        parsing) or strings; ``CATGA_CLUSTER_MEMBERS`` takes a list, a comma-separated string
        or a JSON list. An unknown ``CATGA_CLUSTER_*`` key is an error; ``None`` means unset.
        """
        return cls._build(cls._flask_raw(config), overrides)

    @classmethod
    def from_flask_and_env(
        cls,
        config: Mapping[str, Any],
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> ClusterConfig:
        """What ``CatgaCluster(app)`` reads: each setting from the Flask ``CATGA_CLUSTER_*``
        key when set (not ``None``), else from the guide's ``Cluster__*`` variable
        (``environ`` defaults to ``os.environ``), else its default. ``overrides`` win over
        both. Each source is checked as by :meth:`from_flask_config` and :meth:`from_env`.
        """
        env = os.environ if environ is None else environ
        raw = cls._env_raw(env)
        for name, entry in cls._flask_raw(config).items():
            if entry[1] is not None:
                raw[name] = entry
        return cls._build(raw, overrides)

    @staticmethod
    def _flask_raw(config: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
        raw: dict[str, tuple[str, Any]] = {}
        for key, value in config.items():
            if not isinstance(key, str) or not key.startswith("CATGA_CLUSTER_"):
                continue
            setting = _BY_NAME.get(key[len("CATGA_CLUSTER_") :].lower())
            if setting is None or setting.flask_key != key:
                known = ", ".join(s.flask_key for s in SETTINGS)
                raise ConfigError(f"Unknown Flask config key {key}. Known keys: {known}.")
            raw[setting.name] = (key, value)
        return raw

    @classmethod
    def _build(cls, raw: dict[str, tuple[str, Any]], overrides: Mapping[str, Any]) -> ClusterConfig:
        unknown = sorted(set(overrides) - _BY_NAME.keys())
        if unknown:
            raise ConfigError(
                f"Unknown override(s) {', '.join(unknown)}. Known: {', '.join(_BY_NAME)}."
            )
        kwargs: dict[str, Any] = {}
        for name, (where, value) in raw.items():
            if value is not None:  # null: leave the default
                kwargs[name] = _coerce(_BY_NAME[name], value, where)
        kwargs.update(overrides)
        if kwargs.get("local_node_endpoint") is None:
            raise ConfigError(
                f"{_label('local_node_endpoint')} is required: set it to this node's URL, e.g. "
                "http://localhost:5000 (Cluster__LocalNodeEndpoint in the environment, "
                "CATGA_CLUSTER_LOCAL_NODE_ENDPOINT in Flask config)"
            )
        return cls(**kwargs)


def _positive_duration(name: str, value: object) -> timedelta:
    label = _label(name)
    duration = parse_duration(value, key=label)
    if duration <= timedelta(0):
        raise ConfigError(
            f"{label} must be positive, got {_fmt(duration)}; write e.g. 150ms or 00:00:00.150"
        )
    return duration


def _mask_password(url: str) -> str:
    return _PASSWORD_RE.sub(r"\1***@", url)
