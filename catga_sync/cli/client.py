"""The HTTP admin client of the command line: signed requests to the cluster's admin routes,
tried on each given node until one answers."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..config_values import normalize_or_reason
from ..errors import CatgaError, LeaderUnreachableError, PeerAuthError, UsageError
from ..tls import TlsClient, check_files
from ..transport.admin import AdminClient

__all__ = [
    "CLUSTER_URL_ENV",
    "TLS_OPTIONS",
    "CliError",
    "ClusterClient",
    "cluster_urls",
    "secret_from",
    "tls_from",
]

CLUSTER_URL_ENV = "CATGA_CLUSTER_URL"
SECRET_ENV = "Cluster__Secret"
DEFAULT_TIMEOUT = 10.0
TLS_OPTIONS = (
    ("--tls-ca-file", "Cluster__TlsCaFile", "the CA the nodes' certificates chain to"),
    ("--tls-cert-file", "Cluster__TlsCertFile", "a client certificate, for mutual TLS"),
    ("--tls-key-file", "Cluster__TlsKeyFile", "the client certificate's key"),
)
"""The CLI's TLS flags, the environment variables they fall back to, and what they name."""


class CliError(UsageError):
    """A command could not run as asked; its message is the one line the command prints."""


def cluster_urls(given: str | None, environ: Mapping[str, str] | None = None) -> list[str]:
    """The node URLs from ``--cluster URL[,URL...]``, else from ``CATGA_CLUSTER_URL``."""
    env = os.environ if environ is None else environ
    text = given if given is not None else env.get(CLUSTER_URL_ENV, "")
    urls = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            urls.append(normalize_or_reason(part.strip()))
        except ValueError as exc:
            raise CliError(f"--cluster: {part.strip()!r} is not a node URL ({exc})") from None
    if not urls:
        raise CliError(
            f"no cluster to talk to: pass --cluster http://host:port[,...] or set {CLUSTER_URL_ENV}"
        )
    return urls


def secret_from(given: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The cluster secret from ``--secret``, else ``Cluster__Secret`` (case-insensitive)."""
    if given:
        return given
    env = os.environ if environ is None else environ
    for key, value in env.items():
        if key.lower() == SECRET_ENV.lower() and value:
            return value
    return None


def tls_from(args: Any, environ: Mapping[str, str] | None = None) -> TlsClient:
    """The CLI's TLS files from ``--tls-ca-file`` and so on, else ``Cluster__TlsCaFile`` ...
    (case-insensitive); checked like a node's (readable, the key matches the certificate)."""
    env = os.environ if environ is None else environ
    folded = {key.lower(): value for key, value in env.items() if value}
    files: list[str | None] = []
    labels: dict[str, str] = {}
    for (flag, env_key, _what), name in zip(TLS_OPTIONS, ("ca", "cert", "key"), strict=True):
        given = getattr(args, flag[2:].replace("-", "_"), None)
        files.append(given or folded.get(env_key.lower()))
        labels[name] = f"{flag} ({env_key})"
    ca, cert, key = files
    if key is not None and cert is None:
        raise CliError("--tls-key-file is set without --tls-cert-file: give both, or neither")
    check_files(cert, key, ca, labels=labels)
    return TlsClient(ca, cert, key)


class ClusterClient:
    """Admin calls to a cluster known by a few of its nodes' URLs."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        secret: str | None,
        url_prefix: str = "/_catga",
        timeout: float = DEFAULT_TIMEOUT,
        tls: TlsClient | None = None,
    ) -> None:
        self.urls = list(urls)
        self.timeout = timeout
        self.admin = AdminClient(secret=secret, url_prefix=url_prefix, tls=tls)

    def first(
        self, method: str, route: str, body: dict[str, Any] | None = None, *, local: bool = False
    ) -> tuple[str, dict[str, Any]]:
        """Ask the given nodes in turn; the first that answers decides (its URL, its answer).
        A node that answers with an error ends the search: the error is the cluster's."""
        unreachable: list[str] = []
        for url in self.urls:
            try:
                answer = self.admin.call(
                    url, method, route, body, timeout=self.timeout, local=local, forwarded=False
                )
            except LeaderUnreachableError:
                unreachable.append(url)
                continue
            except PeerAuthError as exc:
                raise CliError(
                    f"{exc} (the CLI signs with --secret, else Cluster__Secret)"
                ) from None
            except CatgaError as exc:
                raise CliError(str(exc) if url in str(exc) else f"{url}: {exc}") from None
            return url, answer
        raise CliError(
            f"no node answered ({', '.join(unreachable)}): check the URLs and that the nodes run"
        )

    def local_view(self, url: str) -> dict[str, Any] | None:
        """One node's own view (``GET members?local=true``), or None when it does not answer."""
        try:
            return self.admin.call(
                url, "GET", "members", timeout=min(self.timeout, 3.0), local=True, forwarded=False
            )
        except CatgaError:
            return None
