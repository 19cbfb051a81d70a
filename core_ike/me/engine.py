"""All check lists of one peer, keyed by connect ID (docs/protocol.md §11.13).

Sans-IO, same surface as a single CheckList: `receive_check` demultiplexes on ME_CONNECTID,
`get_timer` is the earliest deadline of all lists, `datagrams_to_send`/`next_event` drain them all.
Finished lists stay (they keep answering checks statelessly) until `remove` is called.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

from ..codec.message import Message
from ..errors import DecodeError, LocalError, ProtocolError
from .checklist import CheckList, CheckListConfig, CheckListEvent, Datagram
from .checks import Check, decode_check
from .endpoints import Addr, Endpoint

log = logging.getLogger("core_ike.me")


class CheckEngine:
    def __init__(self, config: CheckListConfig | None = None) -> None:
        self.config = config or CheckListConfig()
        self._lists: dict[bytes, CheckList] = {}
        self._orphans: list[CheckList] = []  # stopped lists whose last events are not drained yet
        self.flush: Callable[[], None] | None = None  # the owner's immediate send, given to every list

    def __len__(self) -> int:
        return len(self._lists)

    def __iter__(self) -> Iterator[CheckList]:
        return iter(list(self._lists.values()))

    def get(self, connect_id: bytes) -> CheckList | None:
        return self._lists.get(connect_id)

    def _add(self, cl: CheckList) -> CheckList:
        if cl.connect_id in self._lists:
            # docs/protocol.md §6.2: a duplicate connect ID is refused (strongSwan: "already exists, aborting")
            raise LocalError(f"checklist with connect ID {cl.connect_id.hex()} already exists")
        self._lists[cl.connect_id] = cl
        cl.flush = self.flush
        return cl

    def create_initiator(self, connect_id: bytes, my_key: bytes, my_endpoints: Sequence[Endpoint],
                         now: float) -> CheckList:
        """Call when *sending* ME_CONNECT: the relayed answer may come first (docs/protocol.md §4.4)."""
        return self._add(CheckList.for_initiator(connect_id, my_key, my_endpoints, now, self.config))

    def create_responder(self, connect_id: bytes, peer_key: bytes, peer_endpoints: Sequence[Endpoint],
                         now: float, config: CheckListConfig | None = None) -> CheckList:
        """Call on the relayed ME_CONNECT request (docs/protocol.md §4.1 step 5); `config` replaces the
        engine's for this list."""
        return self._add(CheckList.for_responder(connect_id, peer_key, peer_endpoints, now, config or self.config))

    def set_responder_data(self, connect_id: bytes, key: bytes, endpoints: Sequence[Endpoint],
                           now: float) -> CheckList:
        cl = self._lists.get(connect_id)
        if cl is None:
            raise LocalError(f"checklist {connect_id.hex()} not found")
        cl.set_responder_data(key, endpoints, now)
        return cl

    def stop(self, connect_id: bytes, now: float, reason: str = "mediated IKE_SA_INIT received") -> bool:
        """docs/protocol.md §9.2: the responder got IKE_SA_INIT + N(ME_CONNECTID); stop and remove."""
        cl = self._lists.pop(connect_id, None)
        if cl is None:
            return False
        cl.stop(now, reason)
        self._orphans.append(cl)  # its last events are still drained
        return True

    def remove(self, connect_id: bytes) -> CheckList | None:
        return self._lists.pop(connect_id, None)

    def receive_check(self, data: bytes | Message, src: Addr, dst: Addr, now: float) -> str | None:
        """Route a check to its list; returns the drop reason, or None when accepted."""
        try:
            check: Check = decode_check(data)
        except (DecodeError, ProtocolError) as exc:
            return f"malformed check: {exc}"
        cl = self._lists.get(check.connect_id)
        if cl is None:
            log.debug("checklist %s not found, dropping check", check.connect_id.hex())
            return "unknown connect ID"
        return cl.receive_check(check, src, dst, now)

    def get_timer(self) -> float | None:  # asked after every datagram and timer of the client: no list made
        best: float | None = None
        for cl in self._lists.values():
            t = cl.get_timer()
            if t is not None and (best is None or t < best):
                best = t
        return best

    def handle_timer(self, now: float) -> None:
        for cl in list(self._lists.values()):
            t = cl.get_timer()
            if t is not None and t <= now:
                cl.handle_timer(now)

    # drained after every datagram and timer of the client (MediationClient._pump): no list of the lists
    # made for it (draining a list changes neither the lists nor the orphans)
    def datagrams_to_send(self) -> list[Datagram]:
        out: list[Datagram] = []
        for cl in self._orphans:
            out += cl.datagrams_to_send()
        for cl in self._lists.values():
            out += cl.datagrams_to_send()
        return out

    def next_event(self) -> CheckListEvent | None:
        for lists in (self._orphans, self._lists.values()):
            for cl in lists:
                ev = cl.next_event()
                if ev is not None:
                    return ev
        self._orphans = []
        return None
