"""TLS between nodes (issue 12): the settings in each config form, their start-up checks, and
an https cluster on loopback that elects, replicates and forwards, refuses a peer with a
certificate from another CA (or none, with mutual TLS) and still checks the HMAC signature.

Certificates are made at test time with ``trustme``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme
from helpers import LocalCluster
from helpers.wait import free_ports, poll

from catga_sync.config import ClusterConfig
from catga_sync.errors import ConfigError
from catga_sync.fsm import encode_command
from catga_sync.raft import VoteRequest
from catga_sync.tls import TlsClient
from catga_sync.transport.http import HttpTransport

SECRET = "tls test secret, long enough"


@dataclass
class Pki:
    ca: str
    cert: str
    key: str
    other_ca: str
    other_cert: str
    other_key: str

    def config(self, *, mutual: bool = False) -> dict[str, Any]:
        return {
            "tls_cert_file": self.cert,
            "tls_key_file": self.key,
            "tls_ca_file": self.ca,
            "tls_require_client_cert": mutual,
        }


def _write(tmp: Path, name: str, ca: trustme.CA) -> tuple[str, str, str]:
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    paths = tmp / f"{name}-ca.pem", tmp / f"{name}.pem", tmp / f"{name}-key.pem"
    ca.cert_pem.write_to_path(str(paths[0]))
    leaf.cert_chain_pems[0].write_to_path(str(paths[1]))
    leaf.private_key_pem.write_to_path(str(paths[2]))
    return str(paths[0]), str(paths[1]), str(paths[2])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    return Pki(*_write(tmp, "node", trustme.CA()), *_write(tmp, "rogue", trustme.CA()))


# -- the settings -----------------------------------------------------------------------------


def test_three_config_forms_name_the_same_settings(pki: Pki) -> None:
    endpoint = "https://localhost:7443"
    direct = ClusterConfig(local_node_endpoint=endpoint, **pki.config(mutual=True))
    env = ClusterConfig.from_env(
        {
            "Cluster__LocalNodeEndpoint": endpoint,
            "Cluster__TlsCertFile": pki.cert,
            "Cluster__TlsKeyFile": pki.key,
            "Cluster__TlsCaFile": pki.ca,
            "Cluster__TlsRequireClientCert": "true",
        }
    )
    flask = ClusterConfig.from_flask_config(
        {
            "CATGA_CLUSTER_LOCAL_NODE_ENDPOINT": endpoint,
            "CATGA_CLUSTER_TLS_CERT_FILE": pki.cert,
            "CATGA_CLUSTER_TLS_KEY_FILE": pki.key,
            "CATGA_CLUSTER_TLS_CA_FILE": pki.ca,
            "CATGA_CLUSTER_TLS_REQUIRE_CLIENT_CERT": True,
        }
    )
    mapping = ClusterConfig.from_mapping(
        {
            "Cluster": {
                "LocalNodeEndpoint": endpoint,
                "TlsCertFile": pki.cert,
                "TlsKeyFile": pki.key,
                "TlsCaFile": pki.ca,
                "TlsRequireClientCert": True,
            }
        }
    )
    assert direct == env == flask == mapping
    assert direct.tls_client == TlsClient(pki.ca, pki.cert, pki.key)
    context = direct.server_ssl_context()
    assert context is not None and context.verify_mode.name == "CERT_REQUIRED"
    assert ClusterConfig(local_node_endpoint="http://localhost:7000").server_ssl_context() is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tls_cert_file": None, "tls_key_file": None}, "is https but Cluster:TlsCertFile"),
        ({"tls_cert_file": "/nonexistent/node.pem"}, "cannot be read"),
        ({"tls_key_file": "ROGUE_KEY"}, "cannot be loaded together"),
        ({"tls_ca_file": "KEY"}, "holds no usable CA certificate"),
        ({"tls_ca_file": None, "tls_require_client_cert": True}, "needs Cluster:TlsCaFile"),
        ({"local_node_endpoint": "http://localhost:7443"}, "write the endpoint as https"),
        ({"members": ("http://localhost:7444",)}, "write every member as https"),
        ({"tls_cert_file": None}, "without Cluster:TlsCertFile"),
    ],
)
def test_a_tls_mistake_fails_at_start_naming_the_fix(
    pki: Pki, change: dict[str, Any], message: str
) -> None:
    given: dict[str, Any] = {"local_node_endpoint": "https://localhost:7443", **pki.config()}
    aliases = {"ROGUE_KEY": pki.other_key, "KEY": pki.key}
    given.update({k: aliases.get(v, v) if isinstance(v, str) else v for k, v in change.items()})
    with pytest.raises(ConfigError, match=message):
        ClusterConfig(**given)


# -- an https cluster -------------------------------------------------------------------------


@contextlib.contextmanager
def https_cluster(pki: Pki, *, mutual: bool) -> Iterator[LocalCluster]:
    endpoints = [f"https://127.0.0.1:{p}" for p in free_ports(3)]
    cluster = LocalCluster(
        3,
        transport="http",
        endpoints=endpoints,
        secret=SECRET,
        config=pki.config(mutual=mutual),
        committed_leader=True,
        checked=False,
    )
    with cluster:
        cluster.start()
        yield cluster


def applied_everywhere(cluster: LocalCluster, index: int) -> None:
    poll(
        lambda: all(n.status.last_applied >= index for n in cluster.running()),
        timeout=10,
        what=f"every node applies entry {index}",
    )


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_an_https_cluster_elects_replicates_and_forwards(pki: Pki, mutual: bool) -> None:
    with https_cluster(pki, mutual=mutual) as cluster:
        leader = cluster.leader()
        index, _ = leader.propose_indexed(b"on the leader")
        applied_everywhere(cluster, index)
        follower = cluster.follower()
        # A command entry submitted on a follower goes to the leader (ProposalClient, https).
        data = encode_command("nosuch", "op", [], {}, client=None, seq=None, ack=None, time=0.0)
        follower.submit(data)
        forwarded = leader.status.commit_index
        assert forwarded > index
        applied_everywhere(cluster, forwarded)
        # The admin and operational routes answer https, verified against the cluster's CA.
        tls = cluster.configs[0].tls_client.requests_options()
        answer = requests.get(f"{follower.raft_id}/health", timeout=5, **tls)
        assert answer.status_code == 200
        with pytest.raises(requests.exceptions.SSLError):  # not trusted by the system store
            requests.get(f"{follower.raft_id}/health", timeout=5)


def _send_vote(cluster: LocalCluster, target: str, tls: TlsClient, secret: str) -> HttpTransport:
    transport = HttpTransport(
        sender_id="https://127.0.0.1:1",
        sender_name="rogue",
        peers=[target],
        secret=secret,
        url_prefix="/_catga",
        timeout=1.0,
        ssl_context=tls.context(),
    )
    term = max(n.status.term for n in cluster.running())
    transport.send(
        [VoteRequest(term + 50, "https://127.0.0.1:1", target, 10**6, term + 49, transfer=True)]
    )
    return transport


@pytest.mark.parametrize(
    ("mutual", "who", "why"),
    [
        (True, "rogue", "a certificate from another CA"),
        (True, "anonymous", "no client certificate under mutual TLS"),
        (False, "untrusting", "a client that trusts another CA refuses the node"),
        (True, "unsigned", "the right certificate but the wrong secret"),
    ],
)
def test_a_peer_that_fails_tls_or_the_signature_is_refused_and_changes_nothing(
    pki: Pki, mutual: bool, who: str, why: str
) -> None:
    clients = {
        "rogue": (TlsClient(pki.ca, pki.other_cert, pki.other_key), SECRET),
        "anonymous": (TlsClient(pki.ca), SECRET),
        "untrusting": (TlsClient(pki.other_ca, pki.other_cert, pki.other_key), SECRET),
        "unsigned": (TlsClient(pki.ca, pki.cert, pki.key), "not the cluster secret at all"),
    }
    tls, secret = clients[who]
    with https_cluster(pki, mutual=mutual) as cluster:
        leader = cluster.leader()
        poll(
            lambda: {n.status.term for n in cluster.running()} == {leader.status.term},
            timeout=10,
            what="every node is in the leader's term",
        )
        before = {n.raft_id: n.status.term for n in cluster.running()}
        target = cluster.follower().raft_id
        transport = _send_vote(cluster, target, tls, secret)
        try:
            poll(
                lambda: transport.stats()[target]["failed"] > 0,
                timeout=10,
                what=f"the rogue vote request is refused ({why})",
            )
            time.sleep(0.3)  # what a vote at a higher term would have done by now
        finally:
            transport.close()
        assert {n.raft_id: n.status.term for n in cluster.running()} == before, why
        assert cluster.leader().raft_id == leader.raft_id
