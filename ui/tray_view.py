"""What the tray's windows may use of the tray (``ui.tray.Tray`` provides it)."""

from __future__ import annotations

from collections.abc import Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from app.api import HistoryEntry, Snapshot
    from ui.helper_client import HelperClient
    from ui.rtt import RttSeries
    from ui.secrets import SecretStore


class TrayView(Protocol):
    """The tray as its status window and profile editor see it: the helper's state
    and history, the probe samples, the profile names, the keyring, and where to
    run a coroutine and report a closed window."""

    @property
    def snapshot(self) -> Snapshot | None: ...

    @property
    def network(self) -> str: ...

    @property
    def profiles(self) -> list[str]: ...

    @property
    def helper(self) -> HelperClient | None: ...

    @property
    def store(self) -> SecretStore: ...

    @property
    def rtt(self) -> Mapping[str, RttSeries]: ...

    @property
    def history(self) -> Iterable[HistoryEntry]: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

    def status_window_closed(self, window: object) -> None: ...
