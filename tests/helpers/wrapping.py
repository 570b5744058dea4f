"""A storage that wraps another: the base of the test's fault and checking wrappers, so each
says only what it adds before or after a persist."""

from __future__ import annotations

from collections.abc import Sequence

from catga_sync.raft import Entry, HardState, PersistedState, Snapshot
from catga_sync.storage.base import Storage

__all__ = ["StorageWrapper"]


class StorageWrapper:
    """A :class:`~catga_sync.storage.base.Storage` that is the one it wraps; subclasses hook
    :meth:`before_persist` and :meth:`after_persist`."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.node_id = inner.node_id

    def open(self) -> PersistedState:
        return self.inner.open()

    def persist(
        self,
        *,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        snapshot_replaces_log: bool,
        sync: bool = True,
    ) -> None:
        write = {
            "hard_state": hard_state,
            "entries": entries,
            "snapshot": snapshot,
            "snapshot_replaces_log": snapshot_replaces_log,
            "sync": sync,
        }
        self.before_persist()
        self.inner.persist(**write)  # type: ignore[arg-type]
        self.after_persist(**write)

    def before_persist(self) -> None:
        """Runs before each persist reaches the wrapped storage (raise to refuse it)."""

    def after_persist(self, **write: object) -> None:
        """Runs once the wrapped storage's persist returned, with what it wrote."""

    def close(self) -> None:
        self.inner.close()

    def describe(self) -> str:
        return self.inner.describe()
