"""TLS between nodes: the server and client :class:`ssl.SSLContext` built from the
``TlsCertFile``, ``TlsKeyFile``, ``TlsCaFile`` and ``TlsRequireClientCert`` settings.

A node's certificate serves its endpoint and is also its client certificate; the CA file is
what every outgoing request (Raft messages, proposals, forwarding, admin and CLI calls)
verifies peers against, and, with ``TlsRequireClientCert``, what the server verifies clients
against. :func:`check_files` is the start-up check :class:`~catga_sync.config.ClusterConfig`
runs, so a missing file or a key that does not match its certificate fails at start with a
:class:`~catga_sync.errors.ConfigError`. See ``docs/security.rst``.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["TlsClient", "check_files", "check_settings", "server_context"]


@dataclass(frozen=True, slots=True)
class TlsClient:
    """What an outgoing request presents and verifies: a CA file (None: the system's store)
    and an optional client certificate and key."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def context(self) -> ssl.SSLContext:
        """A client context verifying peers against :attr:`ca_file` (built once per files)."""
        return _client_context(self.ca_file, self.cert_file, self.key_file)

    def requests_options(self) -> dict[str, Any]:
        """``verify`` and ``cert`` for a ``requests`` call."""
        options: dict[str, Any] = {"verify": self.ca_file if self.ca_file else True}
        if self.cert_file:
            options["cert"] = (self.cert_file, self.key_file) if self.key_file else self.cert_file
        return options

    def configure(self, session: Any) -> Any:
        """Set ``session.verify`` and ``session.cert`` (a ``requests.Session``); returns it.
        With ``trust_env`` on, ``REQUESTS_CA_BUNDLE`` overrides the session's ``verify``: pass
        :meth:`requests_options` per request there instead."""
        options = self.requests_options()
        session.verify = options["verify"]
        session.cert = options.get("cert")
        return session


@functools.lru_cache(maxsize=16)
def _client_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


def server_context(
    cert_file: str, key_file: str | None, ca_file: str | None, require_client_cert: bool
) -> ssl.SSLContext:
    """The context a node serves its endpoint with; with ``require_client_cert`` a client
    must present a certificate that chains to ``ca_file`` (mutual TLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if require_client_cert:
        context.load_verify_locations(cafile=ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def check_files(
    cert_file: str | None,
    key_file: str | None,
    ca_file: str | None,
    *,
    labels: dict[str, str],
) -> None:
    """Raise ConfigError unless each given file is readable, the key matches the certificate
    and the CA file holds certificates. ``labels`` names each setting for the message."""
    for name, path in (("cert", cert_file), ("key", key_file), ("ca", ca_file)):
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(
                f"{labels[name]} {path!r} cannot be read ({exc.strerror or exc}): give the path "
                "of a PEM file this process can read"
            ) from None
    if cert_file is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"{labels['cert']} {cert_file!r} and {labels['key']} {key_file!r} cannot be "
                f"loaded together ({exc}): the key must be the certificate's private key, both "
                "in PEM, and the key unencrypted"
            ) from None
    if ca_file is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_verify_locations(cafile=ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"{labels['ca']} {ca_file!r} holds no usable CA certificate ({exc}): give the "
                "PEM certificate of the CA that signed the nodes' certificates"
            ) from None


def check_settings(
    config: Any, put: Callable[[str, object], None], label: Callable[[str], str]
) -> None:
    """The start-up checks of a :class:`~catga_sync.config.ClusterConfig`'s TLS settings:
    paths normalized through ``put``; a ConfigError naming the key (``label``) and the fix."""
    _label = label
    for name in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
        value = getattr(config, name)
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(
                f"{_label(name)} must be the path of a PEM file, got {value!r}: leave it "
                "unset, or e.g. /etc/catga/node0.pem"
            )
        put(name, None if value is None else os.path.expanduser(value))
    if not isinstance(config.tls_require_client_cert, bool):
        raise ConfigError(
            f"{_label('tls_require_client_cert')} must be True or False, got "
            f"{config.tls_require_client_cert!r}"
        )
    cert, key, ca = config.tls_cert_file, config.tls_key_file, config.tls_ca_file
    https = config.local_node_endpoint.startswith("https://")
    if key is not None and cert is None:
        raise ConfigError(
            f"{_label('tls_key_file')} is set without {_label('tls_cert_file')}: set both "
            "(the certificate and its private key)"
        )
    if https and cert is None:
        raise ConfigError(
            f"{_label('local_node_endpoint')} {config.local_node_endpoint} is https but "
            f"{_label('tls_cert_file')} is not set: give the node its certificate and key "
            "(Cluster__TlsCertFile and Cluster__TlsKeyFile), or use an http:// endpoint"
        )
    if cert is not None and not https:
        raise ConfigError(
            f"{_label('tls_cert_file')} is set but {_label('local_node_endpoint')} "
            f"{config.local_node_endpoint} is http: peers would not speak TLS to it; write "
            "the endpoint as https://host:port"
        )
    if https:
        plain = [m for m in config.members if not m.startswith("https://")]
        if plain:
            raise ConfigError(
                f"{_label('members')} lists {', '.join(plain)} over http while this node "
                "serves https: write every member as https://host:port (the cluster speaks "
                "TLS or does not)"
            )
    if config.tls_require_client_cert and (ca is None or cert is None):
        raise ConfigError(
            f"{_label('tls_require_client_cert')} needs {_label('tls_ca_file')} (the CA "
            f"clients' certificates must chain to) and {_label('tls_cert_file')}: set both"
        )
    labels = {
        "cert": _label("tls_cert_file"),
        "key": _label("tls_key_file"),
        "ca": _label("tls_ca_file"),
    }
    check_files(cert, key, ca, labels=labels)
