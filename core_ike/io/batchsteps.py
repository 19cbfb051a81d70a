"""The `seal_batch` and `open_batch` steps of the userspace ESP data plane (`core_ike.io.fastpath`):
the TSO super-packets of one TUN wake-up (up to SEAL_FRAMES of one SA) segmented into a buffer each,
sealed together into one and sent from it, a UDP_GRO read of ESP opened and written to the TUN device
from one, with no per-packet objects (measured step by step in bench/esp_throughput_iperf.py, in
instructions per super-packet by bench/esp_batch_cost.py; the cost per packet of each stage:
docs/architecture.md); and the
per-packet batch they fall back to (`_receive_batch`: one read's ESP packets opened one by one,
their inner packets written as `_write_inner` merges them).

`BatchSteps` is a base class of `core_ike.io.userspace.UserspaceDataPlane`, whose state it uses.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..esp import EspError, InboundSad, SequenceExhaustedError
from ..esp.sa import SealRun
from .fastpath import UdpEspIo
from .offload import NO_OFFLOAD, Coalescer, VnetHdr, merge_run, segment_into

if TYPE_CHECKING:
    from .userspace import _SaState

log = logging.getLogger("core_ike.io.userspace")
SEAL_FRAMES = 8  # TSO super-packets `_seal_laid_out` keeps for one `seal_into` call (bounded memory: 64 KiB each)


class BatchSteps:
    offload: frozenset[str]
    sad: InboundSad
    clock: Callable[[], float]
    _vnet: bool
    _udp: UdpEspIo | None
    _pending: dict[tuple[str, int], list[bytes]]
    _seal_plains: list[bytearray]
    _seal_runs: list[SealRun]
    _seal_st: _SaState | None
    _esp_out: bytearray
    _rx_plain: bytearray
    _tun_fd: int
    tso_frames: int
    batch_seals: int
    tso_segments: int
    coalesced: int
    tun_writes: int
    drop_policy_mismatch: int
    drop_send_error: int

    if TYPE_CHECKING:
        def _sa_out(self, pkt: bytes | bytearray) -> _SaState | None: ...
        def _outbound(self, pkt: bytes | bytearray, now: float, batch: bool = False) -> None: ...
        def _expire(self, st: _SaState, hard: bool, reason: str) -> None: ...
        def _sent(self, st: _SaState) -> None: ...
        def _flush_sends(self) -> None: ...
        def _check_mapping(self, spi: int, src: tuple[str, int]) -> None: ...
        def _inbound_allowed(self, spi: int, inner: bytes) -> bool: ...
        def _needs_ports(self) -> bool: ...

    def _seal_laid_out(self, frame: memoryview, vh: VnetHdr, now: float) -> bool:
        """The `seal_batch` step: a TSO super-packet's segments cut into a buffer of their own and kept
        for `_seal_pending`, which seals the kept super-packets of one SA together (one AEAD call per
        segment, no per-packet objects) and sends each as slices of one buffer; False when the frame
        needs the per-packet path (one segment). A frame whose SA cannot be sealed so (no SA, plain
        ESP, a cipher without `seal_into`), or of another SA or segment size than those kept, first
        lets the kept ones go (packets leave in the order the TUN device gave them)."""
        runs, plains = self._seal_runs, self._seal_plains
        if len(plains) == len(runs):
            plains.append(bytearray())  # at most SEAL_FRAMES: `_seal_pending` runs when that many are kept
        plain = plains[len(runs)]
        laid = segment_into(frame, vh, plain)
        if laid is None:
            return False
        stride, lengths = laid
        st = self._sa_out(plain)  # every segment has the first one's addresses and ports
        if runs and (st is not self._seal_st or lengths[0] != runs[0][2][0]):
            plains[0], plains[len(runs)] = plain, plains[0]  # this frame's buffer first: the others are free after
            self._seal_pending(now)
        if st is None or not st.params.encap or not st.esp.seals_into or self._udp is None:
            for i, length in enumerate(lengths):
                self._outbound(bytes(plain[i * stride : i * stride + length]), now, True)
            self.tso_frames += 1
            self.tso_segments += len(lengths)
            return True
        runs.append((plain, stride, lengths, 41 if plain[0] >> 4 == 6 else 4))
        self._seal_st = st
        if len(runs) >= SEAL_FRAMES:
            self._seal_pending(now)
        return True

    def _seal_pending(self, now: float) -> None:
        """The super-packets `_seal_laid_out` kept, sealed in one `EspSa.seal_into` call and sent, each
        in one UDP_SEGMENT send (or as few as it needs) of a slice of one buffer."""
        runs, st = self._seal_runs, self._seal_st
        if not runs or st is None or self._udp is None:
            return
        try:
            size, sizes = st.esp.seal_into(runs, self._esp_out, now)
        except SequenceExhaustedError:
            self._expire(st, True, "sequence")
            return
        finally:
            runs.clear()
        self._sent(st)  # its byte, packet and sequence marks (core_ike/io/satimers.py)
        self.tso_frames += len(sizes)
        self.tso_segments += sum(map(len, sizes))
        self.batch_seals += len(sizes)
        if st.addr in self._pending:  # what this peer has queued leaves first
            self._flush_sends()
        view, o = memoryview(self._esp_out), 0
        for run in sizes:
            self._udp.send_laid_out(view[o : o + size * (len(run) - 1) + run[-1]], run, st.addr)
            o += size * len(run)

    def _receive_batch(self, packets: list[tuple[bytes, tuple[str, int]]]) -> None:
        """Decrypt a batch of ESP packets and write the inner packets to the TUN device, TCP segments
        of one flow merged into one write when `coalesce` is on."""
        allowed = self._inbound_allowed
        out: list[bytes] = []
        last: tuple[int, tuple[str, int]] | None = None
        for r, (_, src) in zip(self.sad.open_batch([d for d, _ in packets], self.clock()), packets, strict=True):
            if isinstance(r, EspError):
                log.debug("ESP from %s dropped: %s", src, r)
                continue
            sa, nh, inner = r
            if (sa.spi, src) != last:
                last = (sa.spi, src)
                self._check_mapping(sa.spi, src)
            if nh not in (4, 41) or not inner:
                continue  # RFC 4303 2.6: next header 59 = dummy packet, discard silently
            if not allowed(sa.spi, inner):
                self.drop_policy_mismatch += 1
                continue
            out.append(inner)
        self._write_inner(out)

    def _write_inner(self, out: Sequence[bytes]) -> None:
        """Decrypted packets to the TUN device, TCP segments of one flow merged when `coalesce` is on."""
        if self._vnet and "coalesce" in self.offload and len(out) > 1:
            merge = Coalescer()
            merge.add_all(out)
            frames = merge.frames()
            self.coalesced += merge.coalesced
        else:
            frames = [[NO_OFFLOAD, p] if self._vnet else [p] for p in out]
        self._write_frames(frames)

    def _receive_run(self, buf: bytearray | memoryview, size: int, count: int, tail: int, src: tuple[str, int]) -> bool:
        """The `open_batch` step: the ESP datagrams of one UDP_GRO read (back to back in `buf`, `size`
        octets each, the last `tail`) decrypted into one buffer (`EspSa.open_into`) and, when they are
        consecutive segments of one TCP connection, written as GSO super-packets (`merge_run`), with
        no per-packet objects. False (nothing done) when the run needs the per-packet path: an
        unknown SPI, another SA or a non-ESP datagram inside it, a replayed, reordered or bad packet."""
        sa = self.sad.get(int.from_bytes(buf[:4], "big"))
        if sa is None:
            return False
        plain = self._rx_plain
        lengths = sa.open_into(buf, size, count, tail, plain, self.clock())
        if lengths is None:
            return False
        self._check_mapping(sa.spi, src)
        view = memoryview(plain)
        frames = merge_run(plain, size, lengths) if self._vnet and "coalesce" in self.offload else None
        # RFC 4301 5.2.1 (4): the inner packets must match the SA's inbound selectors; the segments
        # merge_run merged share the first one's addresses and ports, so its answer is theirs
        if frames is not None and self._inbound_allowed(sa.spi, bytes(plain[: min(lengths[0], 64)])):
            self.coalesced += count - len(frames)
            self._write_frames(frames)
        elif self._run_allowed(sa.spi, size, lengths):
            self._write_inner([bytes(view[i * size : i * size + n]) for i, n in enumerate(lengths)])
        else:
            inner = [bytes(view[i * size : i * size + n]) for i, n in enumerate(lengths)]
            ok = [p for p in inner if self._inbound_allowed(sa.spi, p)]
            self.drop_policy_mismatch += len(inner) - len(ok)
            self._write_inner(ok)
        return True

    def _run_allowed(self, spi: int, stride: int, lengths: list[int]) -> bool:
        """Do all inner packets of a run pass the SA's inbound selectors (RFC 4301 5.2.1 (4))? Decided
        once when they share the first one's IP version and addresses and no policy looks at ports."""
        plain = self._rx_plain
        if self._needs_ports() or not self._inbound_allowed(spi, bytes(plain[: min(lengths[0], 64)])):
            return False
        n = len(lengths)
        rows = np.frombuffer(plain, np.uint8, n * stride).reshape(n, stride)
        cols = slice(8, 40) if plain[0] >> 4 == 6 else slice(12, 20)
        return not ((rows[1:, 0] >> 4) != (plain[0] >> 4)).any() and not (rows[1:, cols] != rows[0, cols]).any()

    def _write_frames(self, frames: list[list[bytes | bytearray | memoryview]] | list[list[bytes | memoryview]]) -> None:
        self.tun_writes += len(frames)
        for frame in frames:
            try:
                os.writev(self._tun_fd, frame)
            except OSError as e:
                self.drop_send_error += 1
                log.debug("TUN write: %s", e)

