"""Everything that knows Flask: the peer RPC blueprint, the extension and the operational routes."""

from __future__ import annotations

from .blueprint import create_peer_blueprint

__all__ = ["create_peer_blueprint"]
