"""ClusterConfig: the guide's settings, their three sources, and every validation error."""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask

from catga_sync.config import (
    SETTINGS,
    ClusterConfig,
    derive_node_id,
    normalize_endpoint,
    parse_duration,
)
from catga_sync.errors import CatgaError, ConfigError

LOCAL = "http://localhost:5000"
PEERS = ["http://localhost:5001", "http://localhost:5002"]

# The guide's Quick Start appsettings.json, verbatim.
GUIDE_APPSETTINGS = """
{
  "Cluster": {
    "LocalNodeEndpoint": "http://localhost:5000",
    "Members": [
      "http://localhost:5001",
      "http://localhost:5002"
    ],
    "ElectionTimeout": "00:00:00.150",
    "HeartbeatInterval": "00:00:00.050",
    "PersistentStatePath": "./raft-state"
  }
}
"""

# The guide's "Environment Variables" block, verbatim.
GUIDE_ENV = {
    "Cluster__LocalNodeEndpoint": "http://node0:5000",
    "Cluster__Members__0": "http://node1:5000",
    "Cluster__Members__1": "http://node2:5000",
    "Cluster__ElectionTimeout": "00:00:00.150",
    "Cluster__HeartbeatInterval": "00:00:00.050",
    "Cluster__PersistentStatePath": "/data/raft-state",
}


def config(**changes: object) -> ClusterConfig:
    """A valid three-node config with ``changes`` applied."""
    kwargs: dict[str, object] = {"local_node_endpoint": LOCAL, "members": PEERS}
    kwargs.update(changes)
    return ClusterConfig(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Defaults, identity and derived values
# --------------------------------------------------------------------------------------------


class TestDefaults:
    def test_the_guides_defaults(self) -> None:
        cfg = ClusterConfig(local_node_endpoint=LOCAL, members=tuple(PEERS))
        assert cfg.election_timeout == timedelta(milliseconds=150)
        assert cfg.heartbeat_interval == timedelta(milliseconds=50)
        assert cfg.persistent_state_path is None
        assert cfg.persistence == "memory"
        assert cfg.secret is None
        assert cfg.table_prefix == "catga_"
        assert cfg.sqlite_synchronous == "FULL"
        assert cfg.url_prefix == "/_catga"
        assert cfg.max_message_bytes == 8 * 1024 * 1024
        assert cfg.signature_window == timedelta(seconds=30)
        assert cfg.tick_interval is None
        assert cfg.switch_interval == 0.001
        assert cfg.snapshot_every == 10_000
        assert cfg.autostart is True

    def test_derived_ticks_at_the_guides_defaults(self) -> None:
        cfg = config()
        assert cfg.tick == timedelta(milliseconds=10)
        assert cfg.election_ticks == 15
        assert cfg.heartbeat_ticks == 5

    def test_derived_tick_has_a_floor_of_5_ms(self) -> None:
        cfg = config(heartbeat_interval=timedelta(milliseconds=25))
        assert cfg.tick == timedelta(milliseconds=5)
        assert cfg.heartbeat_ticks == 5
        assert cfg.election_ticks == 30

    def test_explicit_tick_interval(self) -> None:
        cfg = config(
            election_timeout=timedelta(milliseconds=300),
            heartbeat_interval=timedelta(milliseconds=100),
            tick_interval=timedelta(milliseconds=25),
        )
        assert cfg.tick == timedelta(milliseconds=25)
        assert cfg.election_ticks == 12
        assert cfg.heartbeat_ticks == 4

    def test_heartbeat_ticks_are_at_least_one(self) -> None:
        cfg = config(tick_interval=timedelta(milliseconds=50))
        assert cfg.heartbeat_ticks == 1
        assert cfg.election_ticks == 3

    def test_raft_config_carries_ids_voters_and_ticks(self) -> None:
        raft = config(max_message_bytes=128 * 1024).raft_config(pre_vote=False)
        assert raft.node_id == LOCAL
        assert raft.membership.voters == frozenset([LOCAL, *PEERS])
        assert (raft.election_ticks, raft.heartbeat_ticks) == (15, 5)
        assert raft.max_entries_bytes == 64 * 1024
        assert raft.snapshot_chunk_bytes == 64 * 1024
        assert raft.pre_vote is False

    def test_identity(self) -> None:
        cfg = config(local_node_endpoint="HTTP://LocalHost:5000/")
        assert cfg.local_node_endpoint == LOCAL
        assert cfg.raft_id == LOCAL
        assert cfg.node_id == "localhost-5000"
        assert cfg.voters == frozenset([LOCAL, *PEERS])
        assert cfg.endpoint_of("http://localhost:5001") == "http://localhost:5001"

    def test_given_node_id_is_kept(self) -> None:
        assert config(node_id="node0").node_id == "node0"

    def test_node_id_is_stable_never_random(self) -> None:
        assert config().node_id == config().node_id == "localhost-5000"

    def test_members_with_and_without_the_local_endpoint_mean_the_same(self) -> None:
        without = config(members=PEERS)
        with_local = config(members=[LOCAL, *PEERS])
        spelled_otherwise = config(members=[*PEERS, "http://LOCALHOST:5000/"])
        assert without == with_local == spelled_otherwise
        assert with_local.members == tuple(PEERS)
        assert with_local.voters == frozenset([LOCAL, *PEERS])

    def test_members_are_normalized_in_order(self) -> None:
        cfg = config(members=["http://Node2:80/", "https://node1"])
        assert cfg.members == ("http://node2:80", "https://node1:443")

    def test_single_node_cluster(self) -> None:
        cfg = ClusterConfig(local_node_endpoint=LOCAL)
        assert cfg.members == ()
        assert cfg.voters == frozenset([LOCAL])

    def test_immutable_and_slotted(self) -> None:
        cfg = config()
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.election_timeout = timedelta(seconds=1)  # type: ignore[misc]
        assert not hasattr(cfg, "__dict__")
        assert isinstance(cfg.members, tuple)
        assert hash(cfg) == hash(config())

    def test_replace_revalidates(self) -> None:
        with pytest.raises(ConfigError, match="HeartbeatInterval"):
            dataclasses.replace(config(), heartbeat_interval=timedelta(milliseconds=75))

    def test_durations_accept_every_form_in_the_constructor(self) -> None:
        cfg = config(election_timeout="00:00:00.200", heartbeat_interval=0.05)
        assert cfg.election_timeout == timedelta(milliseconds=200)
        assert cfg.heartbeat_interval == timedelta(milliseconds=50)

    def test_persistence_kinds(self, tmp_path: Path) -> None:
        assert config(persistent_state_path=str(tmp_path)).persistence == "directory"
        assert config(persistent_state_path=tmp_path).persistent_state_path == str(tmp_path)
        url = "postgresql+psycopg://user:pw@db.example/catga"
        assert config(persistent_state_path=url).persistence == "url"
        assert config(persistent_state_path="sqlite:///state.db").persistence == "url"

    def test_repr_hides_the_secret_and_database_password(self) -> None:
        cfg = config(
            secret="s3cr3t-value-long-enough",
            persistent_state_path="postgresql+psycopg://user:hunter2@db/catga",
        )
        text = repr(cfg)
        assert "s3cr3t" not in text
        assert "hunter2" not in text
        assert "user:***@db" in text
        assert "secret='***'" in text

    def test_switch_interval_accepts_a_timedelta(self) -> None:
        assert config(switch_interval=timedelta(milliseconds=2)).switch_interval == 0.002
        assert config(switch_interval=None).switch_interval is None

    def test_sqlite_synchronous_is_case_insensitive(self) -> None:
        assert config(sqlite_synchronous="normal").sqlite_synchronous == "NORMAL"


# --------------------------------------------------------------------------------------------
# Endpoints and durations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://localhost:5000", "http://localhost:5000"),
        ("http://localhost:5000/", "http://localhost:5000"),
        ("  HTTP://LocalHost:5000  ", "http://localhost:5000"),
        ("http://node0", "http://node0:80"),
        ("https://node0", "https://node0:443"),
        ("http://10.0.0.7:8080", "http://10.0.0.7:8080"),
        ("http://[::1]:5000", "http://[::1]:5000"),
        ("http://[0:0:0:0:0:0:0:1]:5000/", "http://[::1]:5000"),
        ("http://my_service:5000", "http://my_service:5000"),
    ],
)
def test_normalize_endpoint(given: str, expected: str) -> None:
    assert normalize_endpoint(given) == expected
    assert normalize_endpoint(expected) == expected


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("", "empty"),
        ("localhost:5000", "no scheme"),
        ("ftp://localhost:5000", "not http or https"),
        ("http://", "no host"),
        ("http://:5000", "no host"),
        ("http://localhost:5000/api", "path"),
        ("http://localhost:5000?x=1", "query"),
        ("http://localhost:5000#top", "fragment"),
        ("http://localhost:0", "from 1 to 65535"),
        ("http://localhost:65536", "from 1 to 65535"),
        ("http://localhost:http", "from 1 to 65535"),
        ("http://user:pw@localhost:5000", "credentials"),
        ("http://bad host:5000", "host name"),
        ("http://[::1:5000", "cannot be parsed"),
    ],
)
def test_normalize_endpoint_rejects(given: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as caught:
        normalize_endpoint(given)
    assert "http://host:port" in str(caught.value)


def test_derive_node_id() -> None:
    assert derive_node_id("http://localhost:5000") == "localhost-5000"
    assert derive_node_id("https://Node1.example.com") == "node1.example.com-443"
    assert derive_node_id("http://[::1]:5000") == "--1-5000"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        # .NET TimeSpan strings
        ("00:00:00.150", timedelta(milliseconds=150)),
        ("00:00:00.050", timedelta(milliseconds=50)),
        ("00:01:30", timedelta(seconds=90)),
        ("1.00:00:00", timedelta(days=1)),
        ("00:00:00.1234567", timedelta(microseconds=123457)),
        ("00:05", timedelta(minutes=5)),
        ("-00:00:01", timedelta(seconds=-1)),
        # numbers of seconds
        (0.15, timedelta(milliseconds=150)),
        (2, timedelta(seconds=2)),
        ("0.15", timedelta(milliseconds=150)),
        ("3", timedelta(seconds=3)),
        # numbers with units
        ("150ms", timedelta(milliseconds=150)),
        ("150 ms", timedelta(milliseconds=150)),
        ("0.15s", timedelta(milliseconds=150)),
        ("2m", timedelta(minutes=2)),
        ("1h", timedelta(hours=1)),
        ("500us", timedelta(microseconds=500)),
        # timedelta
        (timedelta(milliseconds=75), timedelta(milliseconds=75)),
    ],
)
def test_parse_duration(given: object, expected: timedelta) -> None:
    assert parse_duration(given) == expected


@pytest.mark.parametrize(
    "given",
    ["", "soon", "15o ms", "1.5.0", "25:00:00", "00:61:00", True, None, [0.15], float("nan")],
)
def test_parse_duration_rejects(given: object) -> None:
    with pytest.raises(ConfigError, match="ElectionTimeout"):
        parse_duration(given, key="Cluster:ElectionTimeout")


# --------------------------------------------------------------------------------------------
# Validation at construction: every error names the key (guide name and Python name)
# --------------------------------------------------------------------------------------------

LABEL = {s.name: s.label for s in SETTINGS}

INVALID: list[tuple[dict[str, object], str, str]] = [
    # (changes, key named, words of the fix)
    ({"local_node_endpoint": ""}, "local_node_endpoint", "is required"),
    ({"local_node_endpoint": "   "}, "local_node_endpoint", "is required"),
    ({"local_node_endpoint": "localhost:5000"}, "local_node_endpoint", "no scheme"),
    ({"local_node_endpoint": "tcp://localhost:5000"}, "local_node_endpoint", "http or https"),
    ({"local_node_endpoint": "http:///x"}, "local_node_endpoint", "no host"),
    ({"local_node_endpoint": "http://localhost:5000/raft"}, "local_node_endpoint", "path"),
    ({"local_node_endpoint": "http://localhost:5000?a=b"}, "local_node_endpoint", "query"),
    ({"local_node_endpoint": "http://localhost:70000"}, "local_node_endpoint", "from 1 to 65535"),
    ({"members": ["http://localhost:5001", "nope"]}, "members", "members[1]"),
    ({"members": "http://localhost:5001"}, "members", "list of endpoint URLs"),
    (
        {"members": ["http://localhost:5001", "HTTP://LOCALHOST:5001/"]},
        "members",
        "twice",
    ),
    ({"members": [LOCAL, "http://localhost:5001", LOCAL]}, "members", "twice"),
    (
        {"heartbeat_interval": timedelta(milliseconds=75)},
        "heartbeat_interval",
        "half of Cluster:ElectionTimeout",
    ),
    ({"election_timeout": timedelta(milliseconds=90)}, "election_timeout", "floor of 100 ms"),
    ({"heartbeat_interval": timedelta(milliseconds=20)}, "heartbeat_interval", "floor of 25 ms"),
    ({"election_timeout": 150}, "election_timeout", "150ms"),
    ({"election_timeout": timedelta(0)}, "election_timeout", "must be positive"),
    ({"election_timeout": -0.15}, "election_timeout", "must be positive"),
    ({"heartbeat_interval": "-00:00:00.050"}, "heartbeat_interval", "must be positive"),
    ({"heartbeat_interval": 0}, "heartbeat_interval", "must be positive"),
    ({"election_timeout": "fast"}, "election_timeout", "TimeSpan"),
    ({"signature_window": 0}, "signature_window", "must be positive"),
    ({"signature_window": 0.5}, "signature_window", "at least 1 s"),
    ({"tick_interval": 0}, "tick_interval", "must be positive"),
    ({"tick_interval": timedelta(microseconds=500)}, "tick_interval", "between 1 ms"),
    ({"tick_interval": timedelta(milliseconds=60)}, "tick_interval", "heartbeat interval"),
    ({"node_id": "node 0"}, "node_id", "letters, digits"),
    ({"node_id": "node/0"}, "node_id", "letters, digits"),
    ({"node_id": "x" * 256}, "node_id", "1 to 255"),
    ({"node_id": ".."}, "node_id", "letters, digits"),
    ({"node_id": 7}, "node_id", "must be a string"),
    ({"local_node_endpoint": f"http://{'a' * 252}:5000"}, "node_id", "set it explicitly"),
    ({"secret": ""}, "secret", "non-empty"),
    ({"persistent_state_path": ""}, "persistent_state_path", "in-memory"),
    (
        {"persistent_state_path": "postgresql://u:pw@h:port/db"},
        "persistent_state_path",
        "SQLAlchemy URL",
    ),
    ({"table_prefix": ""}, "table_prefix", "lowercase letters"),
    ({"table_prefix": "Catga_"}, "table_prefix", "lowercase letters"),
    ({"table_prefix": "catga-"}, "table_prefix", "lowercase letters"),
    ({"table_prefix": "1catga_"}, "table_prefix", "starting with a letter"),
    ({"table_prefix": "c" * 33}, "table_prefix", "1 to 32"),
    ({"table_prefix": "x; drop table"}, "table_prefix", "lowercase letters"),
    ({"sqlite_synchronous": "OFF"}, "sqlite_synchronous", "FULL"),
    ({"url_prefix": "_catga"}, "url_prefix", "start with '/'"),
    ({"url_prefix": "/_catga/"}, "url_prefix", "not end with '/'"),
    ({"url_prefix": "/"}, "url_prefix", "start with '/'"),
    ({"max_message_bytes": 1024}, "max_message_bytes", "64 KiB"),
    ({"max_message_bytes": True}, "max_message_bytes", "whole number"),
    ({"max_message_bytes": 8e6}, "max_message_bytes", "whole number"),
    ({"snapshot_every": 0}, "snapshot_every", "at least 1"),
    ({"switch_interval": 0}, "switch_interval", "above 0"),
    ({"switch_interval": -0.001}, "switch_interval", "above 0"),
    ({"switch_interval": 2.0}, "switch_interval", "at most 1"),
    ({"switch_interval": "0.001"}, "switch_interval", "number of seconds"),
    ({"autostart": "yes"}, "autostart", "True or False"),
]


@pytest.mark.parametrize(
    ("changes", "key", "fix"), INVALID, ids=[f"{c[1]}-{i}" for i, c in enumerate(INVALID)]
)
def test_validation_error_names_the_key_and_the_fix(
    changes: dict[str, object], key: str, fix: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config(**changes)
    message = str(caught.value)
    if key == "members" and "members[" in message:
        assert "Cluster:Members:1 (members[1])" in message
    else:
        assert LABEL[key] in message
    assert fix in message


def test_missing_endpoint_message_is_the_documented_one() -> None:
    with pytest.raises(ConfigError) as caught:
        ClusterConfig()
    assert str(caught.value) == (
        "Cluster:LocalNodeEndpoint (local_node_endpoint) is required: set it to this node's URL, "
        "e.g. http://localhost:5000"
    )


def test_config_error_is_a_catga_error_and_a_value_error() -> None:
    with pytest.raises(CatgaError):
        config(election_timeout=0)
    with pytest.raises(ValueError):
        config(election_timeout=0)


def test_heartbeat_just_under_half_the_election_timeout_is_allowed() -> None:
    cfg = config(heartbeat_interval=timedelta(milliseconds=74))
    assert cfg.election_ticks > cfg.heartbeat_ticks


def test_the_floors_themselves_are_allowed() -> None:
    cfg = config(
        election_timeout=timedelta(milliseconds=100), heartbeat_interval=timedelta(milliseconds=25)
    )
    assert (cfg.election_ticks, cfg.heartbeat_ticks) == (20, 5)


# --------------------------------------------------------------------------------------------
# Warnings
# --------------------------------------------------------------------------------------------


def test_even_number_of_voters_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="catga_sync.config"):
        cfg = config(members=["http://localhost:5001"])
    assert len(cfg.voters) == 2
    [record] = [r for r in caplog.records if r.name == "catga_sync.config"]
    assert record.levelno == logging.WARNING
    assert "2 voters" in record.getMessage()
    assert "odd number" in record.getMessage()


def test_four_voters_warn_too_even_when_the_local_endpoint_is_listed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    members = [LOCAL, *PEERS, "http://localhost:5003"]
    with caplog.at_level(logging.WARNING, logger="catga_sync.config"):
        config(members=members)
    assert any("4 voters" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("members", [[], PEERS, [LOCAL, *PEERS]])
def test_odd_number_of_voters_logs_nothing(
    caplog: pytest.LogCaptureFixture, members: list[str]
) -> None:
    with caplog.at_level(logging.DEBUG, logger="catga_sync.config"):
        config(members=members, secret="a-long-enough-cluster-secret")
    assert [r for r in caplog.records if r.name == "catga_sync.config"] == []


def test_short_secret_logs_a_warning_without_the_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="catga_sync.config"):
        config(secret="tiny-secret")
    messages = [r.getMessage() for r in caplog.records if r.name == "catga_sync.config"]
    assert any("Cluster:Secret (secret)" in m and "shorter than 16" in m for m in messages)
    assert not any("tiny-secret" in m for m in messages)


# --------------------------------------------------------------------------------------------
# from_mapping: the guide's appsettings.json
# --------------------------------------------------------------------------------------------


class TestFromMapping:
    def test_the_guides_appsettings_json(self) -> None:
        cfg = ClusterConfig.from_mapping(json.loads(GUIDE_APPSETTINGS))
        assert cfg.local_node_endpoint == LOCAL
        assert cfg.members == tuple(PEERS)
        assert cfg.election_timeout == timedelta(milliseconds=150)
        assert cfg.heartbeat_interval == timedelta(milliseconds=50)
        assert cfg.persistent_state_path == "./raft-state"
        assert cfg.persistence == "directory"
        assert cfg.node_id == "localhost-5000"

    def test_the_section_alone_means_the_same(self) -> None:
        document = json.loads(GUIDE_APPSETTINGS)
        assert ClusterConfig.from_mapping(document["Cluster"]) == ClusterConfig.from_mapping(
            document
        )

    def test_other_sections_of_the_document_are_ignored(self) -> None:
        document = json.loads(GUIDE_APPSETTINGS)
        document["Logging"] = {"LogLevel": {"Catga.Cluster": "Debug"}}
        document["AllowedHosts"] = "*"
        assert ClusterConfig.from_mapping(document).local_node_endpoint == LOCAL

    def test_snake_case_and_camel_case_keys(self) -> None:
        snake = ClusterConfig.from_mapping(
            {
                "local_node_endpoint": LOCAL,
                "members": PEERS,
                "election_timeout": 0.2,
                "heartbeat_interval": "60ms",
                "node_id": "node0",
                "table_prefix": "app_catga_",
            }
        )
        camel = ClusterConfig.from_mapping(
            {
                "cluster": {
                    "localNodeEndpoint": LOCAL,
                    "members": PEERS,
                    "electionTimeout": "00:00:00.200",
                    "HEARTBEATINTERVAL": timedelta(milliseconds=60),
                    "NodeId": "node0",
                    "TablePrefix": "app_catga_",
                }
            }
        )
        assert snake == camel
        assert snake.election_timeout == timedelta(milliseconds=200)
        assert snake.table_prefix == "app_catga_"

    def test_every_key_in_the_guides_case(self, tmp_path: Path) -> None:
        cfg = ClusterConfig.from_mapping(
            {
                "Cluster": {
                    "LocalNodeEndpoint": LOCAL,
                    "Members": PEERS,
                    "ElectionTimeout": "00:00:00.300",
                    "HeartbeatInterval": "00:00:00.100",
                    "PersistentStatePath": str(tmp_path),
                    "NodeId": "node0",
                    "Secret": "0123456789abcdef0123",
                    "TablePrefix": "c_",
                    "SqliteSynchronous": "NORMAL",
                    "UrlPrefix": "/internal/raft",
                    "MaxMessageBytes": 1048576,
                    "SignatureWindow": "00:00:10",
                    "TickInterval": "20ms",
                    "SwitchInterval": 0.002,
                    "SnapshotEvery": 500,
                    "Autostart": False,
                }
            }
        )
        assert cfg.secret == "0123456789abcdef0123"
        assert cfg.sqlite_synchronous == "NORMAL"
        assert cfg.url_prefix == "/internal/raft"
        assert cfg.max_message_bytes == 1 << 20
        assert cfg.signature_window == timedelta(seconds=10)
        assert cfg.tick == timedelta(milliseconds=20)
        assert (cfg.election_ticks, cfg.heartbeat_ticks) == (15, 5)
        assert cfg.switch_interval == 0.002
        assert cfg.snapshot_every == 500
        assert cfg.autostart is False

    def test_settings_cover_every_field(self) -> None:
        names = [f.name for f in dataclasses.fields(ClusterConfig)]
        assert [s.name for s in SETTINGS] == names

    def test_members_as_a_dotnet_indexed_object(self) -> None:
        cfg = ClusterConfig.from_mapping(
            {"LocalNodeEndpoint": LOCAL, "Members": {"1": PEERS[1], "0": PEERS[0]}}
        )
        assert cfg.members == tuple(PEERS)

    def test_members_with_a_gap_in_the_indexed_object(self) -> None:
        with pytest.raises(ConfigError, match="without gaps"):
            ClusterConfig.from_mapping(
                {"LocalNodeEndpoint": LOCAL, "Members": {"0": PEERS[0], "2": PEERS[1]}}
            )

    def test_members_as_a_comma_separated_string(self) -> None:
        cfg = ClusterConfig.from_mapping({"LocalNodeEndpoint": LOCAL, "Members": ",".join(PEERS)})
        assert cfg.members == tuple(PEERS)

    def test_null_leaves_the_default(self) -> None:
        cfg = ClusterConfig.from_mapping(
            {
                "LocalNodeEndpoint": LOCAL,
                "Members": PEERS,
                "PersistentStatePath": None,
                "ElectionTimeout": None,
                "SwitchInterval": None,
            }
        )
        assert cfg.persistent_state_path is None
        assert cfg.election_timeout == timedelta(milliseconds=150)
        assert cfg.switch_interval == 0.001

    def test_switch_interval_none_string_disables_the_mitigation(self) -> None:
        cfg = ClusterConfig.from_mapping(
            {"LocalNodeEndpoint": LOCAL, "Members": PEERS, "SwitchInterval": "none"}
        )
        assert cfg.switch_interval is None

    def test_unknown_key_lists_the_known_ones(self) -> None:
        with pytest.raises(ConfigError) as caught:
            ClusterConfig.from_mapping(
                {"Cluster": {"LocalNodeEndpoint": LOCAL, "ElectionTimout": "00:00:00.150"}}
            )
        message = str(caught.value)
        assert "'ElectionTimout'" in message
        for setting in SETTINGS:
            assert setting.guide in message

    def test_a_document_without_a_cluster_section_is_read_as_the_section(self) -> None:
        with pytest.raises(ConfigError, match="no Cluster section"):
            ClusterConfig.from_mapping({"Logging": {}})

    def test_the_same_key_twice_in_two_spellings(self) -> None:
        with pytest.raises(ConfigError, match="keep one"):
            ClusterConfig.from_mapping({"LocalNodeEndpoint": LOCAL, "local_node_endpoint": LOCAL})

    def test_missing_endpoint(self) -> None:
        with pytest.raises(ConfigError, match=r"Cluster:LocalNodeEndpoint \(local_node_endpoint\)"):
            ClusterConfig.from_mapping({"Cluster": {"Members": PEERS}})

    def test_bad_value_names_the_key_as_written(self) -> None:
        with pytest.raises(ConfigError, match=r"ElectionTimeout \(election_timeout\)"):
            ClusterConfig.from_mapping({"LocalNodeEndpoint": LOCAL, "ElectionTimeout": "soon"})
        with pytest.raises(ConfigError, match=r"MaxMessageBytes \(max_message_bytes\)"):
            ClusterConfig.from_mapping({"LocalNodeEndpoint": LOCAL, "MaxMessageBytes": "8 MiB"})
        with pytest.raises(ConfigError, match=r"NodeId \(node_id\).*JSON string"):
            ClusterConfig.from_mapping({"LocalNodeEndpoint": LOCAL, "NodeId": 1.5})
        with pytest.raises(ConfigError, match=r"Members \(members\)"):
            ClusterConfig.from_mapping({"LocalNodeEndpoint": LOCAL, "Members": 5})
        with pytest.raises(ConfigError, match=r"Secret \(secret\) is empty"):
            ClusterConfig.from_mapping({"LocalNodeEndpoint": LOCAL, "Secret": ""})

    def test_overrides_win(self) -> None:
        cfg = ClusterConfig.from_mapping(
            json.loads(GUIDE_APPSETTINGS),
            node_id="node0",
            persistent_state_path=None,
            election_timeout=timedelta(milliseconds=300),
        )
        assert cfg.node_id == "node0"
        assert cfg.persistent_state_path is None
        assert cfg.election_timeout == timedelta(milliseconds=300)

    def test_unknown_override(self) -> None:
        with pytest.raises(ConfigError, match=r"Unknown override.*nodeid"):
            ClusterConfig.from_mapping(json.loads(GUIDE_APPSETTINGS), nodeid="node0")

    def test_two_cluster_sections(self) -> None:
        with pytest.raises(ConfigError, match="several Cluster sections"):
            ClusterConfig.from_mapping({"Cluster": {}, "cluster": {}})

    def test_not_a_mapping(self) -> None:
        with pytest.raises(ConfigError, match="expects a mapping"):
            ClusterConfig.from_mapping([("LocalNodeEndpoint", LOCAL)])  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="must be an object"):
            ClusterConfig.from_mapping({"Cluster": "http://localhost:5000"})


# --------------------------------------------------------------------------------------------
# from_env: the guide's environment variables
# --------------------------------------------------------------------------------------------


class TestFromEnv:
    def test_the_guides_environment_block(self) -> None:
        cfg = ClusterConfig.from_env(GUIDE_ENV)
        assert cfg.local_node_endpoint == "http://node0:5000"
        assert cfg.members == ("http://node1:5000", "http://node2:5000")
        assert cfg.election_timeout == timedelta(milliseconds=150)
        assert cfg.heartbeat_interval == timedelta(milliseconds=50)
        assert cfg.persistent_state_path == "/data/raft-state"
        assert cfg.node_id == "node0-5000"

    def test_same_as_the_mapping(self) -> None:
        assert ClusterConfig.from_env(GUIDE_ENV) == ClusterConfig.from_mapping(
            {
                "Cluster": {
                    "LocalNodeEndpoint": "http://node0:5000",
                    "Members": ["http://node1:5000", "http://node2:5000"],
                    "ElectionTimeout": "00:00:00.150",
                    "HeartbeatInterval": "00:00:00.050",
                    "PersistentStatePath": "/data/raft-state",
                }
            }
        )

    def test_keys_are_case_insensitive_like_dotnet(self) -> None:
        env = {key.upper(): value for key, value in GUIDE_ENV.items()}
        assert ClusterConfig.from_env(env) == ClusterConfig.from_env(GUIDE_ENV)
        lower = {key.lower(): value for key, value in GUIDE_ENV.items()}
        assert ClusterConfig.from_env(lower) == ClusterConfig.from_env(GUIDE_ENV)

    def test_the_same_key_in_two_cases(self) -> None:
        env = dict(GUIDE_ENV, CLUSTER__NODEID="a", Cluster__NodeId="b")
        with pytest.raises(ConfigError, match="keep one"):
            ClusterConfig.from_env(env)

    def test_every_other_key_from_strings(self) -> None:
        env = dict(
            GUIDE_ENV,
            Cluster__NodeId="node0",
            Cluster__Secret="0123456789abcdef0123",
            Cluster__TablePrefix="c_",
            Cluster__SqliteSynchronous="normal",
            Cluster__UrlPrefix="/raft",
            Cluster__MaxMessageBytes="1048576",
            Cluster__SignatureWindow="00:00:05",
            Cluster__TickInterval="0.01",
            Cluster__SwitchInterval="none",
            Cluster__SnapshotEvery="100",
            Cluster__Autostart="false",
        )
        cfg = ClusterConfig.from_env(env)
        assert cfg.node_id == "node0"
        assert cfg.secret == "0123456789abcdef0123"
        assert cfg.table_prefix == "c_"
        assert cfg.sqlite_synchronous == "NORMAL"
        assert cfg.url_prefix == "/raft"
        assert cfg.max_message_bytes == 1 << 20
        assert cfg.signature_window == timedelta(seconds=5)
        assert cfg.tick == timedelta(milliseconds=10)
        assert cfg.switch_interval is None
        assert cfg.snapshot_every == 100
        assert cfg.autostart is False

    @pytest.mark.parametrize(("text", "expected"), [("true", True), ("0", False), ("ON", True)])
    def test_booleans(self, text: str, expected: bool) -> None:
        assert (
            ClusterConfig.from_env(dict(GUIDE_ENV, Cluster__Autostart=text)).autostart is expected
        )

    def test_bad_boolean(self) -> None:
        with pytest.raises(ConfigError, match=r"Cluster__Autostart \(autostart\)"):
            ClusterConfig.from_env(dict(GUIDE_ENV, Cluster__Autostart="maybe"))

    def test_other_variables_are_ignored(self) -> None:
        env = dict(GUIDE_ENV, PATH="/usr/bin", ClusterName="x", FLASK_CATGA_CLUSTER_SECRET="y")
        assert ClusterConfig.from_env(env) == ClusterConfig.from_env(GUIDE_ENV)

    def test_the_local_endpoint_among_the_members(self) -> None:
        env = dict(GUIDE_ENV, Cluster__Members__2="http://node0:5000")
        assert ClusterConfig.from_env(env) == ClusterConfig.from_env(GUIDE_ENV)

    def test_a_gap_in_member_indexes(self) -> None:
        env = {k: v for k, v in GUIDE_ENV.items() if k != "Cluster__Members__0"}
        with pytest.raises(ConfigError, match="Cluster__Members__0 is missing") as caught:
            ClusterConfig.from_env(env)
        assert "without gaps" in str(caught.value)

    def test_members_as_one_variable(self) -> None:
        env = {k: v for k, v in GUIDE_ENV.items() if "Members__" not in k}
        env["Cluster__Members"] = "http://node1:5000, http://node2:5000"
        assert ClusterConfig.from_env(env) == ClusterConfig.from_env(GUIDE_ENV)
        env["Cluster__Members"] = '["http://node1:5000", "http://node2:5000"]'
        assert ClusterConfig.from_env(env) == ClusterConfig.from_env(GUIDE_ENV)

    def test_members_both_ways_at_once(self) -> None:
        env = dict(GUIDE_ENV, Cluster__Members="http://node3:5000")
        with pytest.raises(ConfigError, match="one way"):
            ClusterConfig.from_env(env)

    def test_the_same_member_index_twice(self) -> None:
        env = dict(GUIDE_ENV, CLUSTER__MEMBERS__1="http://node3:5000")
        with pytest.raises(ConfigError, match="same member"):
            ClusterConfig.from_env(env)

    @pytest.mark.parametrize(
        "key", ["Cluster__ElectionTimout", "Cluster__Members__x", "Cluster__NodeId__0"]
    )
    def test_unknown_variable(self, key: str) -> None:
        with pytest.raises(ConfigError, match=f"Unknown environment variable {key}") as caught:
            ClusterConfig.from_env(dict(GUIDE_ENV, **{key: "1"}))
        assert "Cluster__HeartbeatInterval" in str(caught.value)
        assert "Cluster__Members__0" in str(caught.value)

    def test_missing_endpoint(self) -> None:
        env = {k: v for k, v in GUIDE_ENV.items() if k != "Cluster__LocalNodeEndpoint"}
        with pytest.raises(ConfigError, match="Cluster__LocalNodeEndpoint in the environment"):
            ClusterConfig.from_env(env)

    def test_empty_value(self) -> None:
        with pytest.raises(ConfigError, match=r"Cluster__PersistentStatePath.*is empty"):
            ClusterConfig.from_env(dict(GUIDE_ENV, Cluster__PersistentStatePath=""))

    def test_invalid_member_names_its_index(self) -> None:
        with pytest.raises(ConfigError, match=r"Cluster:Members:1 \(members\[1\]\)"):
            ClusterConfig.from_env(dict(GUIDE_ENV, Cluster__Members__1="node2:5000"))

    def test_validation_still_applies(self) -> None:
        env = dict(GUIDE_ENV, Cluster__HeartbeatInterval="00:00:00.100")
        with pytest.raises(ConfigError, match="HeartbeatInterval"):
            ClusterConfig.from_env(env)

    def test_overrides_win(self) -> None:
        cfg = ClusterConfig.from_env(GUIDE_ENV, node_id="node0", members=["http://node1:5000"])
        assert cfg.node_id == "node0"
        assert cfg.members == ("http://node1:5000",)

    def test_reads_os_environ_by_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for key in [k for k in __import__("os").environ if k.lower().startswith("cluster__")]:
            monkeypatch.delenv(key)
        for key, value in GUIDE_ENV.items():
            monkeypatch.setenv(key, value)
        assert ClusterConfig.from_env() == ClusterConfig.from_env(GUIDE_ENV)


# --------------------------------------------------------------------------------------------
# from_flask_config: CATGA_CLUSTER_* keys
# --------------------------------------------------------------------------------------------


class TestFromFlaskConfig:
    def test_typed_values(self) -> None:
        cfg = ClusterConfig.from_flask_config(
            {
                "CATGA_CLUSTER_LOCAL_NODE_ENDPOINT": LOCAL,
                "CATGA_CLUSTER_MEMBERS": PEERS,
                "CATGA_CLUSTER_ELECTION_TIMEOUT": timedelta(milliseconds=200),
                "CATGA_CLUSTER_HEARTBEAT_INTERVAL": 0.05,
                "CATGA_CLUSTER_NODE_ID": "node0",
                "CATGA_CLUSTER_AUTOSTART": False,
                "SECRET_KEY": "flask's own, not ours",
                "CATGA_METRICS": True,
            }
        )
        assert cfg.members == tuple(PEERS)
        assert cfg.election_timeout == timedelta(milliseconds=200)
        assert cfg.node_id == "node0"
        assert cfg.autostart is False
        assert cfg.secret is None

    @pytest.mark.parametrize(
        "members",
        [PEERS, tuple(PEERS), ",".join(PEERS), " , ".join(PEERS), json.dumps(PEERS)],
    )
    def test_members_forms(self, members: object) -> None:
        cfg = ClusterConfig.from_flask_config(
            {"CATGA_CLUSTER_LOCAL_NODE_ENDPOINT": LOCAL, "CATGA_CLUSTER_MEMBERS": members}
        )
        assert cfg.members == tuple(PEERS)

    def test_members_bad_json(self) -> None:
        with pytest.raises(ConfigError, match=r"CATGA_CLUSTER_MEMBERS \(members\).*JSON"):
            ClusterConfig.from_flask_config(
                {"CATGA_CLUSTER_LOCAL_NODE_ENDPOINT": LOCAL, "CATGA_CLUSTER_MEMBERS": '["a",'}
            )

    def test_unknown_key(self) -> None:
        with pytest.raises(ConfigError, match="CATGA_CLUSTER_ELECTION_TIMOUT") as caught:
            ClusterConfig.from_flask_config(
                {"CATGA_CLUSTER_LOCAL_NODE_ENDPOINT": LOCAL, "CATGA_CLUSTER_ELECTION_TIMOUT": 1}
            )
        for setting in SETTINGS:
            assert setting.flask_key in str(caught.value)

    def test_none_means_unset(self) -> None:
        flask_defaults: dict[str, object] = {s.flask_key: None for s in SETTINGS}
        flask_defaults["CATGA_CLUSTER_LOCAL_NODE_ENDPOINT"] = LOCAL
        flask_defaults["CATGA_CLUSTER_MEMBERS"] = PEERS
        assert ClusterConfig.from_flask_config(flask_defaults) == config()

    def test_missing_endpoint(self) -> None:
        with pytest.raises(ConfigError, match="CATGA_CLUSTER_LOCAL_NODE_ENDPOINT in Flask"):
            ClusterConfig.from_flask_config({"CATGA_CLUSTER_MEMBERS": PEERS})

    def test_overrides_win(self) -> None:
        cfg = ClusterConfig.from_flask_config(
            {"CATGA_CLUSTER_LOCAL_NODE_ENDPOINT": LOCAL, "CATGA_CLUSTER_MEMBERS": PEERS},
            secret="0123456789abcdef0123",
        )
        assert cfg.secret == "0123456789abcdef0123"

    def test_from_prefixed_env_with_a_real_flask_app(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FLASK_CATGA_CLUSTER_LOCAL_NODE_ENDPOINT", "http://a:1")
        monkeypatch.setenv("FLASK_CATGA_CLUSTER_MEMBERS", '["http://a:1","http://b:2"]')
        monkeypatch.setenv("FLASK_CATGA_CLUSTER_ELECTION_TIMEOUT", "0.2")  # JSON: a float
        monkeypatch.setenv("FLASK_CATGA_CLUSTER_HEARTBEAT_INTERVAL", "00:00:00.040")  # a str
        monkeypatch.setenv("FLASK_CATGA_CLUSTER_NODE_ID", "7")  # JSON: an int
        monkeypatch.setenv("FLASK_CATGA_CLUSTER_SECRET", '"0123456789012345678"')  # quoted
        monkeypatch.setenv("FLASK_CATGA_CLUSTER_MAX_MESSAGE_BYTES", "1048576")
        monkeypatch.setenv("FLASK_CATGA_CLUSTER_AUTOSTART", "false")  # JSON: a bool
        monkeypatch.setenv("FLASK_CATGA_CLUSTER_SWITCH_INTERVAL", "null")  # JSON: None
        app = Flask(__name__)
        app.config.from_prefixed_env()
        assert app.config["CATGA_CLUSTER_MEMBERS"] == ["http://a:1", "http://b:2"]

        cfg = ClusterConfig.from_flask_config(app.config)

        assert cfg.local_node_endpoint == "http://a:1"
        assert cfg.members == ("http://b:2",)
        assert cfg.voters == frozenset(["http://a:1", "http://b:2"])
        assert cfg.election_timeout == timedelta(milliseconds=200)
        assert cfg.heartbeat_interval == timedelta(milliseconds=40)
        assert cfg.node_id == "7"
        assert cfg.secret == "0123456789012345678"
        assert cfg.max_message_bytes == 1 << 20
        assert cfg.autostart is False
        assert cfg.switch_interval == 0.001

    def test_from_prefixed_env_with_an_unquoted_float_secret(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("FLASK_CATGA_CLUSTER_LOCAL_NODE_ENDPOINT", "http://a:1")
        monkeypatch.setenv("FLASK_CATGA_CLUSTER_SECRET", "1e3")  # JSON: 1000.0, not "1e3"
        app = Flask(__name__)
        app.config.from_prefixed_env()
        with pytest.raises(ConfigError, match=r"CATGA_CLUSTER_SECRET \(secret\).*JSON string"):
            ClusterConfig.from_flask_config(app.config)


# --------------------------------------------------------------------------------------------
# The examples in docs/configuration.rst load as shown
# --------------------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.rst"


def _code_blocks(language: str) -> list[str]:
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        if line.strip() == f".. code-block:: {language}":
            current = []
            blocks.append(current)
        elif current is not None:
            if line and not line.startswith("   "):
                current = None
            else:
                current.append(line[3:])
    return ["\n".join(block).strip() for block in blocks]


def test_the_docs_json_example_loads() -> None:
    [document] = _code_blocks("json")
    cfg = ClusterConfig.from_mapping(json.loads(document))
    assert cfg.node_id == "node0"
    assert cfg.members == tuple(PEERS)


def test_the_docs_environment_examples_load(monkeypatch: pytest.MonkeyPatch) -> None:
    guide_form, flask_form = _code_blocks("bash")
    env = dict(line.split("=", 1) for line in guide_form.splitlines())
    assert ClusterConfig.from_env(env).node_id == "node0"

    for line in flask_form.splitlines():
        key, value = line.split("=", 1)
        monkeypatch.setenv(key, value.strip("'"))
    app = Flask(__name__)
    app.config.from_prefixed_env()
    cfg = ClusterConfig.from_flask_config(app.config)
    assert cfg.members == tuple(PEERS)
    assert cfg.secret == "change-me-to-a-long-random-string"
