"""The receive side of RFC 7383 for one IKE_SA: which fragments are kept at all, reassembly under the
memory caps, and an account of every fragment dropped.

- Only fragments inside the message-ID window are stored (RFC 7383 2.6, 2.6.1): a request with the
  Message ID we expect next, the response to our request in flight. Others are dropped before they
  are decrypted; fragment 1 of a request we already answered makes us send the response again.
- A new Message ID's fragments replace an older incomplete message of the same direction.
- Memory: `EngineConfig.frag_max_per_sa` accounted octets per IKE_SA, `frag_max_total` across the
  engine (a `ReassemblyBudget`); when one is reached the oldest incomplete message goes first.
- Every fragment dropped is counted in `Engine.counters` as `drop-fragment-REASON` (what `ikectl stats`
  and the metrics show) and logged, at most one line per IKE_SA per `LOG_INTERVAL`; the next line
  says how many were left out.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..codec.message import Drop, Message, Reassembler, SkProtector
from ..codec.payloads import SkfPayload
from ..errors import DecodeError, IntegrityError

if TYPE_CHECKING:
    from .sa import IkeSa

log = logging.getLogger("core_ike.ike")

LOG_INTERVAL = 1.0  # seconds between two fragment-drop lines of one IKE_SA
# drops that are part of normal operation: logged at INFO, not WARNING
_ROUTINE = frozenset({"duplicate", "retransmit", "replaced", "expired", "closed"})


def _what(response: bool, mid: int) -> str:
    return f"{'response' if response else 'request'} {mid}"


class FragmentReceiver:
    """One per IKE_SA, created at its first fragment (most SAs never see one)."""

    __slots__ = ("log_at", "reassembler", "suppressed")

    def __init__(self, sa: IkeSa) -> None:
        eng = sa.engine
        self.reassembler = Reassembler(max_bytes=eng.cfg.frag_max_per_sa, budget=eng.frag_budget)
        self.log_at = float("-inf")  # no drop line before this time
        self.suppressed = 0  # drop lines left out since the last one

    def receive(self, sa: IkeSa, msg: Message, prot: SkProtector, now: float) -> tuple[Message, bytes] | None:
        """One SKF message for `sa`; once the message is complete, fragment 1 (its header) and the
        reassembled plaintext of the inner payloads (codec.message.reassembled decodes them)."""
        skf = msg.sk
        assert isinstance(skf, SkfPayload)
        mid, response = msg.message_id, msg.is_response
        if response:
            out = sa.outstanding
            expected = out.mid if out is not None else None
        else:
            expected = sa.peer_mid
            cached = sa.cached_response
            if mid != expected and cached is not None and cached[0] == mid:
                self._retransmitted(sa, msg, skf, prot, now)
                return None
        if mid != expected:
            self._drop(sa, now, Drop((msg.spi_i, msg.spi_r, mid, response), "window", 1, 0),
                       "fragment #%d of %s outside the message-ID window (expected %s)",
                       skf.number, _what(response, mid), "none" if expected is None else expected)
            return None
        r = self.reassembler
        # what is left of an earlier Message ID is outside the window now: it can never complete
        for key in r:
            if key[3] == response and key[2] != mid:
                r.discard(key, "replaced")
        try:
            full = r.add_plain(msg, prot, now)  # RFC 7383 2.6
        except IntegrityError as e:
            self._report(sa, now)
            self._drop(sa, now, Drop((msg.spi_i, msg.spi_r, mid, response), "integrity", 1, 0),
                       "fragment #%d of %s: integrity check failed (%s)", skf.number, _what(response, mid), e)
            return None
        except DecodeError as e:
            self._report(sa, now, str(e))
            return None
        self._report(sa, now)
        if log.isEnabledFor(logging.INFO):  # the arguments cost more than the disabled call
            log.info("received fragment #%d of %d%s", skf.number, skf.total,
                     ", reassembled fragmented IKE message" if full is not None else ", waiting for the rest")
        return full

    def _retransmitted(self, sa: IkeSa, msg: Message, skf: SkfPayload, prot: SkProtector, now: float) -> None:
        """RFC 7383 2.6.1: only fragment 1 of a request we answered triggers the response again (once its
        ICV checks out); the other fragments are ignored."""
        key = (msg.spi_i, msg.spi_r, msg.message_id, False)
        if skf.number == 1:
            try:
                prot.open(skf.prefix, skf.body)
            except IntegrityError as e:
                self._drop(sa, now, Drop(key, "integrity", 1, 0),
                           "fragment #1 of %s: integrity check failed (%s)", _what(False, msg.message_id), e)
                return
            sa.resend_response(msg.message_id, now)
            return
        self._drop(sa, now, Drop(key, "retransmit", 1, 0), "fragment #%d of retransmitted %s ignored",
                   skf.number, _what(False, msg.message_id))

    def expire(self, sa: IkeSa, now: float) -> None:
        self.reassembler.expire(now)
        self._report(sa, now)

    def close(self, sa: IkeSa, now: float) -> None:
        """The IKE_SA is gone: give back what it held of the engine-wide budget."""
        self.reassembler.clear()
        self._report(sa, now)

    def next_deadline(self) -> float | None:
        return self.reassembler.next_deadline()

    # ------------------------------------------------------------------ accounting
    def _report(self, sa: IkeSa, now: float, why: str | None = None) -> None:
        """Count and log what the Reassembler gave up (`why`: the limit that refused the fragment at hand)."""
        drops = self.reassembler.take_drops()
        for i, d in enumerate(drops):
            own = d.key[0] == sa.spi_i and d.key[1] == sa.spi_r
            text = f"{d.fragments} fragment{'s' if d.fragments != 1 else ''} of {_what(d.key[3], d.key[2])}"
            if not own:  # the engine-wide budget took another IKE_SA's oldest message
                text += f" of IKE_SA {d.key[0].hex()}_i {d.key[1].hex()}_r"
            cause = why if why is not None and i == len(drops) - 1 else None  # the refused fragment is last
            text += f" ({d.octets} octets held): " + (cause or _REASONS.get(d.reason, d.reason))
            self._drop(sa, now, d, "%s", text)

    def _drop(self, sa: IkeSa, now: float, d: Drop, fmt: str, *args: object) -> None:
        """Count `d`; log it unless this IKE_SA logged a drop less than LOG_INTERVAL ago."""
        sa.engine.counters[f"drop-fragment-{d.reason}"] += d.fragments
        if now < self.log_at:
            self.suppressed += 1
            return
        more = f" ({self.suppressed} more fragment drop lines suppressed)" if self.suppressed else ""
        log.log(logging.INFO if d.reason in _ROUTINE else logging.WARNING,
                "%s: dropping " + fmt + "%s", sa.label, *args, more)
        self.log_at = now + LOG_INTERVAL
        self.suppressed = 0


_REASONS = {
    "memory": "reassembly memory cap reached (oldest incomplete message first)",
    "limit": "message over the fragment limits",
    "expired": "incomplete message timed out",
    "replaced": "superseded (a newer Message ID, or re-fragmented with a larger total)",
    "duplicate": "duplicate or smaller Total Fragments (RFC 7383 2.6.1)",
    "closed": "the IKE_SA is gone",
}
