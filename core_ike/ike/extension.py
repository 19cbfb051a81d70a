"""The engine's hooks for protocol extensions (the mediation extension, the daemons' glue plug in here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..codec.message import Message
from .config import IkeConfig
from .context import Task

if TYPE_CHECKING:
    from .sa import IkeSa

Addr = tuple[str, int]


class Extension:
    """Hooks for protocol extensions (the mediation extension plugs in here)."""

    def tasks(self, sa: IkeSa, exchange: int, initiator: bool, msg: Message | None) -> list[Task]:
        """Tasks this extension adds to an exchange. Not asked for a responder's IKE_SA_INIT request of
        the common shape (SA, KE, Nonce and only fastinit.PLAIN_NOTIFIES), which core_ike/ike/fastinit.py
        answers directly: an extension acts on its own notifies or Vendor IDs there."""
        return []

    def on_established(self, sa: IkeSa, now: float) -> None:
        return None

    def on_destroyed(self, sa: IkeSa, now: float) -> None:
        return None

    def handle_plain(self, msg: Message, local: Addr, remote: Addr, now: float) -> bool:
        """An unencrypted message with zero SPIs (ME connectivity check); True if consumed."""
        return False

    def config_score(self, cfg: IkeConfig, sa: IkeSa) -> int:
        """Extra preference when choosing a peer config at IKE_AUTH (0 = neutral, <0 = reject)."""
        return 0

    def next_deadline(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None
