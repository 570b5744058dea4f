"""The loose values a configuration is written in, parsed once: endpoints (a node's Raft
identity is its normalized endpoint), node ids derived from them, and durations in the guide's
TimeSpan form (``00:00:00.150``), as seconds or with a unit (``150ms``)."""

from __future__ import annotations

import ipaddress
import math
import re
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import TypeAlias, overload
from urllib.parse import urlsplit

from .errors import ConfigError

__all__ = ["Duration", "derive_node_id", "normalize_endpoint", "parse_duration", "seconds"]

Duration: TypeAlias = "float | timedelta"
"""A duration an API takes: a number of seconds, or a :class:`~datetime.timedelta`."""

NODE_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,255}")
HOST_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?")


def normalize_or_reason(url: object) -> str:
    """Normalize an endpoint or raise a plain ValueError whose text is the reason."""
    if not isinstance(url, str):
        raise ValueError(f"expected a URL string, got {type(url).__name__}")
    text = url.strip()
    if not text:
        raise ValueError("it is empty")
    if "://" not in text:
        raise ValueError("it has no scheme")
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise ValueError(f"it cannot be parsed ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"the scheme {parts.scheme!r} is not http or https")
    if "@" in parts.netloc:
        raise ValueError("it contains credentials (user@host); peers authenticate with the secret")
    host = parts.hostname
    if not host:
        raise ValueError("it has no host")
    if parts.path not in ("", "/"):
        raise ValueError(f"it has a path ({parts.path!r}); the RPC path comes from url_prefix")
    if parts.query or parts.fragment:
        raise ValueError("it has a query or fragment")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("its port is not a number from 1 to 65535") from None
    if port is None:
        port = 443 if scheme == "https" else 80
    if port == 0:
        raise ValueError("its port is not a number from 1 to 65535")
    if ":" in host:
        try:
            host = f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv6 address") from None
    elif not HOST_RE.fullmatch(host):
        raise ValueError(f"{host!r} is not a valid host name (use the ASCII form)")
    return f"{scheme}://{host}:{port}"


def normalize_endpoint(url: str) -> str:
    """Return ``url`` as ``scheme://host:port``: lowercase scheme and host, explicit port
    (80/443 when omitted), no path or trailing slash. Peers compare endpoints in this form.

    Raises :class:`~catga_sync.errors.ConfigError` for anything that is not a plain
    http(s) base URL.
    """
    try:
        return normalize_or_reason(url)
    except ValueError as exc:
        raise ConfigError(
            f"{url!r} is not a valid endpoint: {exc}. "
            "Write it as http://host:port, e.g. http://localhost:5000."
        ) from None


def derive_node_id(endpoint: str) -> str:
    """The node id implied by an endpoint: ``host-port`` (``http://localhost:5000`` gives
    ``localhost-5000``). Stable across restarts, unlike a random id."""
    parts = urlsplit(normalize_endpoint(endpoint))
    host = re.sub(r"[^A-Za-z0-9._-]", "-", parts.hostname or "")
    return f"{host}-{parts.port}"


_TIMESPAN_RE = re.compile(
    r"(?P<sign>-)?(?:(?P<days>\d+)\.)?(?P<hours>\d{1,2}):(?P<minutes>\d{1,2})"
    r"(?::(?P<seconds>\d{1,2})(?:\.(?P<fraction>\d{1,7}))?)?"
)
_UNIT_RE = re.compile(
    r"(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(?P<unit>ms|us|µs|s|sec|m|min|h)?",
    re.IGNORECASE,
)
_MICROSECONDS_PER_UNIT = {
    None: 1_000_000,
    "s": 1_000_000,
    "sec": 1_000_000,
    "ms": 1_000,
    "us": 1,
    "µs": 1,
    "m": 60_000_000,
    "min": 60_000_000,
    "h": 3_600_000_000,
}
_DURATION_FORMS = "a TimeSpan like 00:00:00.150, a number of seconds like 0.15, or 150ms"


def parse_duration(value: object, *, key: str = "duration") -> timedelta:
    """Read a duration in any of the accepted forms.

    ``timedelta``; a number of seconds (``0.15``); a .NET TimeSpan string
    (``"00:00:00.150"``, ``"00:01:30"``, ``"1.00:00:00"``); or a number with a unit
    (``"150ms"``, ``"0.15s"``, ``"2m"``, ``"1h"``; no unit means seconds). Note that a bare
    number means seconds here, where .NET would read ``"1"`` as one day. ``key`` names the
    setting in the error.
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration, got {value!r}; write {_DURATION_FORMS}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ConfigError(f"{key}: {value!r} is not a finite number of seconds")
        try:
            return timedelta(seconds=value)
        except OverflowError:
            raise ConfigError(f"{key}: {value!r} seconds is too long") from None
    if not isinstance(value, str):
        raise ConfigError(
            f"{key}: expected a duration, got {type(value).__name__}; write {_DURATION_FORMS}"
        )
    text = value.strip()
    try:
        span = _TIMESPAN_RE.fullmatch(text)
        if span is not None:
            return _timespan(span, value, key)
        number = _UNIT_RE.fullmatch(text)
        if number is not None:
            unit = number["unit"].lower() if number["unit"] else None
            micros = Decimal(number["number"]) * _MICROSECONDS_PER_UNIT[unit]
            return timedelta(microseconds=int(micros.to_integral_value(ROUND_HALF_EVEN)))
    except (OverflowError, InvalidOperation):
        raise ConfigError(f"{key}: {value!r} is too long a duration") from None
    raise ConfigError(f"{key}: cannot read {value!r} as a duration; write {_DURATION_FORMS}")


@overload
def seconds(value: None) -> None: ...
@overload
def seconds(value: Duration) -> float: ...


def seconds(value: Duration | None) -> float | None:
    """``value`` in seconds: a ``timedelta`` becomes its ``total_seconds()``; a number (or
    None, or anything else, for the caller's own check to name) is returned as it is. Every
    API that takes a timeout, TTL or wait reads it through this."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def _timespan(match: re.Match[str], value: str, key: str) -> timedelta:
    hours, minutes = int(match["hours"]), int(match["minutes"])
    seconds = int(match["seconds"] or 0)
    if hours > 23 or minutes > 59 or seconds > 59:
        # .NET refuses these too; "25:00:00" is more likely a typo than a day and an hour.
        raise ConfigError(
            f"{key}: {value!r} is not a valid TimeSpan: hours run to 23, minutes and seconds to "
            "59 (days go before a dot, as in 1.00:00:00)"
        )
    # Up to 7 fraction digits (.NET ticks of 100 ns); timedelta keeps microseconds.
    fraction = Decimal(f"0.{match['fraction'] or 0}") * 1_000_000
    span = timedelta(
        days=int(match["days"] or 0),
        hours=hours,
        minutes=minutes,
        seconds=seconds,
        microseconds=int(fraction.to_integral_value(ROUND_HALF_EVEN)),
    )
    return -span if match["sign"] else span


def format_duration(duration: timedelta) -> str:
    millis = duration / timedelta(milliseconds=1)
    if abs(millis) < 1000:
        return f"{millis:g} ms"
    return f"{duration.total_seconds():g} s"
