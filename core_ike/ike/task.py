"""Exchanges are composed of small tasks (design principle 5; model: strongSwan sa/ikev2/tasks).

The initiator side of a task adds payloads to a request (`build_i`) and consumes the response
(`process_i`); the responder side consumes a request (`process_r`) and adds to the response
(`build_r`). Tasks raise `ProtocolError` to fail; the task manager in `sa.py` turns that into a
notify, a log line and an event.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from ..codec.message import Message
from ..constants import ExchangeType

if TYPE_CHECKING:
    from .sa import IkeSa


class Status(Enum):
    DONE = "done"
    NEED_MORE = "need more"  # the task continues in a later exchange
    RESTART = "restart"  # resend this exchange with a rebuilt request (COOKIE / INVALID_KE)


class Task:
    """Base class; subclasses override what their role needs."""

    exchange: ExchangeType = ExchangeType.INFORMATIONAL
    name: str = "task"
    # somebody waits for this exchange (an `up`, a mediation): the request is retransmitted on the early
    # schedule of RetransmitConfig, and so is a request in flight that it has to wait for (window 1)
    prompt: bool = False

    def build_i(self, sa: IkeSa, msg: Message) -> None:
        raise NotImplementedError

    def process_i(self, sa: IkeSa, msg: Message, now: float) -> Status:
        raise NotImplementedError

    def process_r(self, sa: IkeSa, msg: Message, now: float) -> None:
        raise NotImplementedError

    def build_r(self, sa: IkeSa, msg: Message) -> None:
        raise NotImplementedError

    def responded(self, sa: IkeSa, now: float) -> None:
        """Responder: the response built by this task was sent; default: nothing."""
        return None

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        """The exchange carrying this task failed (timeout, error notify); default: nothing."""
        return None
