"""Shared pytest fixtures for the catga_sync test suite."""

from __future__ import annotations

import pytest

PEER_SECRET = "peer test secret"


@pytest.fixture(params=[None, PEER_SECRET], ids=["open", "signed"])
def secret(request: pytest.FixtureRequest) -> str | None:
    """The peer route's shared secret: each test that takes it runs open and signed."""
    value: str | None = request.param
    return value
