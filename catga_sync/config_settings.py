"""The configuration keys, the name each goes by in every source (the guide's PascalCase
``Cluster:LocalNodeEndpoint``, the environment's ``Cluster__LocalNodeEndpoint``, Flask's
``CATGA_CLUSTER_LOCAL_NODE_ENDPOINT``), and how a loader reads a loose value for one (a string
from the environment, JSON, a .NET-style indexed list). :mod:`catga_sync.config` builds and
checks the configuration from them."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .config_values import parse_duration
from .errors import ConfigError

# --------------------------------------------------------------------------------------------
# The settings, under every source's name
# --------------------------------------------------------------------------------------------

_Kind = Literal[
    "str", "optional_str", "members", "duration", "optional_duration", "seconds", "int", "bool"
]


@dataclass(frozen=True, slots=True)
class Setting:
    """One configuration key and the names it goes by in each source."""

    name: str
    """The Python name: a :class:`ClusterConfig` field and a loader keyword."""
    kind: _Kind
    """How loaders read a loose value (a string from the environment, JSON, ...) for it."""

    @property
    def guide(self) -> str:
        """The guide's PascalCase key in the ``"Cluster"`` section, e.g. ``LocalNodeEndpoint``."""
        return "".join(part.capitalize() for part in self.name.split("_"))

    @property
    def label(self) -> str:
        """How error messages name the key: ``Cluster:LocalNodeEndpoint (local_node_endpoint)``."""
        return f"Cluster:{self.guide} ({self.name})"

    @property
    def env_key(self) -> str:
        """The environment variable, e.g. ``Cluster__LocalNodeEndpoint``."""
        return f"Cluster__{self.guide}"

    @property
    def flask_key(self) -> str:
        """The Flask config key, e.g. ``CATGA_CLUSTER_LOCAL_NODE_ENDPOINT``."""
        return f"CATGA_CLUSTER_{self.name.upper()}"


SETTINGS: tuple[Setting, ...] = (
    Setting("local_node_endpoint", "str"),
    Setting("members", "members"),
    Setting("election_timeout", "duration"),
    Setting("heartbeat_interval", "duration"),
    Setting("persistent_state_path", "optional_str"),
    Setting("node_id", "str"),
    Setting("secret", "optional_str"),
    Setting("client_token", "optional_str"),
    Setting("table_prefix", "str"),
    Setting("sqlite_synchronous", "str"),
    Setting("url_prefix", "str"),
    Setting("max_message_bytes", "int"),
    Setting("pipeline_depth", "int"),
    Setting("peer_frames", "bool"),
    Setting("signature_window", "duration"),
    Setting("tick_interval", "optional_duration"),
    Setting("switch_interval", "seconds"),
    Setting("snapshot_every", "int"),
    Setting("background_snapshot_after", "optional_duration"),
    Setting("autostart", "bool"),
    Setting("join", "bool"),
    # TLS between nodes (issue 12; docs/security.rst)
    Setting("tls_cert_file", "optional_str"),
    Setting("tls_key_file", "optional_str"),
    Setting("tls_ca_file", "optional_str"),
    Setting("tls_require_client_cert", "bool"),
)
"""Every key, in the order of :class:`ClusterConfig`'s fields."""

_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
# .NET configuration keys are case-insensitive; folding underscores too lets one table accept
# the guide's PascalCase, camelCase and our snake_case.
_BY_FOLDED: dict[str, Setting] = {s.guide.lower(): s for s in SETTINGS}


def _fold(key: str) -> str:
    return key.replace("_", "").lower()


def _label(name: str) -> str:
    return _BY_NAME[name].label


# --------------------------------------------------------------------------------------------
# Loose values from the loaders' sources
# --------------------------------------------------------------------------------------------


def _put_once(raw: dict[str, tuple[str, Any]], setting: Setting, key: str, value: Any) -> None:
    if setting.name in raw:
        raise ConfigError(
            f"{raw[setting.name][0]!r} and {key!r} both set {setting.label}: keep one"
        )
    raw[setting.name] = (key, value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _coerce(setting: Setting, value: Any, where: str) -> Any:
    """Turn a value from a loader's source into what the constructor takes."""
    key = f"{where} ({setting.name})"
    kind = setting.kind
    if kind in ("str", "optional_str"):
        if isinstance(value, str):
            if not value:
                raise ConfigError(f"{key} is empty: set a value or remove the key")
            return value
        if _is_int(value):  # from_prefixed_env turns FLASK_..._NODE_ID=7 into 7
            return str(value)
        if kind == "optional_str" and isinstance(value, os.PathLike):
            return value
        raise ConfigError(
            f"{key} must be a string, got {type(value).__name__} {value!r}"
            " (in FLASK_* variables, quote it as a JSON string)"
        )
    if kind == "members":
        return _members(value, key)
    if kind == "duration":
        return parse_duration(value, key=key)
    if kind in ("optional_duration", "seconds"):
        if isinstance(value, str) and value.strip().lower() == "none":
            return None
        duration = parse_duration(value, key=key)
        return duration.total_seconds() if kind == "seconds" else duration
    if kind == "int":
        if _is_int(value):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip(), 10)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a whole number, got {value!r}")
    # kind == "bool"
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if _is_int(value) and value in (0, 1):
        return bool(value)
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def _members(value: Any, key: str) -> list[Any]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise ConfigError(f"{key}: {value!r} is not a valid JSON list ({exc})") from None
            if not isinstance(value, list):
                raise ConfigError(f"{key}: expected a JSON list of URLs, got {value!r}")
            return value
        return [part.strip() for part in text.split(",") if part.strip()]
    if isinstance(value, Mapping):
        # .NET binds arrays from keys "0", "1", ...; accept the same shape.
        try:
            indexed = {int(k): v for k, v in value.items()}
        except (TypeError, ValueError):
            raise ConfigError(
                f"{key}: expected a list of URLs, or an object keyed 0, 1, ...; got {value!r}"
            ) from None
        if sorted(indexed) != list(range(len(indexed))):
            raise ConfigError(
                f"{key}: member indexes {sorted(indexed)} must run from 0 without gaps"
            )
        return [indexed[i] for i in range(len(indexed))]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ConfigError(f"{key}: expected a list of URLs, got {type(value).__name__} {value!r}")
