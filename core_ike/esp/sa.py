"""Sans-IO ESP security association for tunnel mode (RFC 4303).

Packet layout (RFC 4303 2)::

    SPI (4) | Sequence Number (4) | IV | ciphertext(inner | padding | Pad Length | Next Header) | ICV

Transforms (KEYMAT layout, nonces, AAD and the AEAD table: `algorithms.py`):

- AEAD: AES-GCM with 8/12/16-octet ICVs (RFC 4106), AES-CCM with 8/12/16-octet ICVs (RFC 4309),
  ChaCha20-Poly1305 (RFC 7634). Nonce = salt | 8-octet explicit IV, AAD = SPI | Seq (or
  SPI | Seq-high | Seq-low with ESN). The explicit IV is the 64-bit packet counter (RFC 4106 3.1,
  RFC 4309 3.1, RFC 7634 2: a counter is a valid IV; it never repeats under one key).
- AES-CBC (RFC 3602) + HMAC-SHA1-96 (RFC 2404) / HMAC-SHA2-256-128, -384-192, -512-256
  (RFC 4868). KEYMAT = encryption key | integrity key (RFC 7296 2.17). ICV over
  SPI | Seq | IV | ciphertext (| Seq-high with ESN, RFC 4303 2.2.1).

Performance notes: ciphers are keyed once per SA. For CBC one long-lived encryptor context is used:
each packet is prefixed with one block ``seq XOR C_prev`` whose ciphertext becomes the packet's IV,
i.e. IV = E(K, nonce) as in NIST SP 800-38A Appendix C (unpredictable, RFC 3602 2.3); decryption
feeds ``IV | ciphertext`` into a long-lived decryptor and drops the first output block, which is
exactly CBC decryption under that IV.
"""

from __future__ import annotations

import collections
import functools
import hmac as stdlib_hmac  # compare_digest only; every MAC is computed with `cryptography`
import itertools
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..constants import EncrId, IntegId
from ..errors import LocalError
from .algorithms import AEAD_ALIGN, AEAD_IV, AEADS, INTEG, AeadInto, AeadSpec, aead_keyed, key_lengths
from .errors import (
    EspError,
    EspIntegrityError,
    EspPaddingError,
    EspReplayError,
    EspTruncatedError,
    SequenceExhaustedError,
)
from .replay import ReplayWindow
from .views import VIEWS, Buffer

NEXT_HEADER_IPV4 = 4  # RFC 4303 2.6 (IANA protocol numbers)
NEXT_HEADER_IPV6 = 41
NEXT_HEADER_NO_NEXT = 59  # RFC 4303 2.6: dummy packet, discard

_HDR = struct.Struct(">II")
_SEQ_HI = struct.Struct(">I")
_Q = struct.Struct(">Q")
_QQ = struct.Struct(">QQ")
_HDR_IV = struct.Struct(">IIQ")  # SPI | Seq | explicit IV (the 64-bit counter)

# RFC 4303 2.4: pad bytes are 1, 2, 3, ... ; index by pad length
_PADS = [bytes(range(1, n + 1)) for n in range(256)]

CBC_IV = 16

SealRun = tuple[bytearray, int, list[int], int]
"""`EspSa.seal_into`'s run of inner packets: (buffer, stride, lengths, next header)."""


@dataclass(slots=True)
class EspCounters:
    """Per-SA counters; bytes are inner (plaintext IP) octets, times are the caller's `now`."""

    bytes_in: int = 0
    packets_in: int = 0
    bytes_out: int = 0
    packets_out: int = 0
    last_in: float = 0.0
    last_out: float = 0.0
    drop_bad_icv: int = 0
    drop_replay: int = 0
    drop_bad_padding: int = 0
    drop_truncated: int = 0

    def as_dict(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in self.__slots__}


def _drain(it: Iterable[object]) -> None:
    """Run an iterator to its end (the map() of AEAD calls), keeping nothing."""
    collections.deque(it, maxlen=0)


@functools.lru_cache(maxsize=256)
def _run_heads(size: int, count: int) -> struct.Struct:
    """SPI and Seq of `count` ESP packets of `size` octets lying back to back (the last may be shorter)."""
    return struct.Struct(">" + f"II{size - 8}x" * (count - 1) + "II")


@functools.lru_cache(maxsize=256)
def _run_trailers(size: int, count: int, body: int, pad: int) -> struct.Struct:
    """Padding, Pad Length and Next Header of `count` decrypted packets laid out every `size` octets."""
    return struct.Struct("".join(f"{body}x{pad}sBB{size - body - pad - 2}x" for _ in range(count)))


@functools.lru_cache(maxsize=64)
def _suite(encr_id: EncrId, key_bits: int, integ_id: IntegId) -> tuple[int, int, AeadSpec | None, int, int, int]:
    """What an SA of these transforms is laid out by, worked out once per suite (a gateway installs the same
    few for every CHILD_SA): the key lengths (RFC 7296 2.17; LocalError when they cannot be installed), the
    AEAD parameters (None: CBC with HMAC), the padding alignment, the IV and ICV lengths (RFC 4303 2)."""
    encr_len, integ_len = key_lengths(encr_id, key_bits, integ_id)
    spec = AEADS.get(encr_id)
    if spec is not None:
        return encr_len, integ_len, spec, AEAD_ALIGN, AEAD_IV, spec.icv
    return encr_len, integ_len, None, CBC_IV, CBC_IV, INTEG[integ_id][2]  # RFC 3602 2.4: block size alignment


class EspSa:
    """One direction of an ESP SA: `seal` for outbound, `open` for inbound."""

    # a data plane holds two per CHILD_SA: no attribute dict each (memory, and the dict built at every install)
    __slots__ = ("_align", "_cbc_dec", "_cbc_enc", "_chain", "_hmac", "_into", "_is_aead", "_iv_len", "_min_len",
                 "_open_aead", "_salt", "_seal_aead", "_spi_bytes", "counters", "encr_id", "esn", "icv_len",
                 "integ_id", "key_bits", "overhead", "seq_max", "seq_out", "spi", "window")

    def __init__(
        self,
        spi: int,
        encr_id: EncrId,
        key_bits: int,
        encr_key: bytes,
        integ_id: IntegId = IntegId.NONE,
        integ_key: bytes = b"",
        *,
        replay_window: int = 128,
        esn: bool = False,
    ) -> None:
        encr_len, integ_len, spec, align, iv_len, icv_len = _suite(encr_id, key_bits, integ_id)
        if len(encr_key) != encr_len or len(integ_key) != integ_len:
            raise LocalError(
                f"ESP key lengths {len(encr_key)}/{len(integ_key)} != expected {encr_len}/{integ_len}"
            )
        if not 0 < spi <= 0xFFFFFFFF:
            raise LocalError("SPI must be a non-zero 32-bit value (RFC 4303 2.1)")
        self.spi = spi
        self.encr_id = encr_id
        self.key_bits = key_bits
        self.integ_id = integ_id
        self.esn = esn
        self.seq_out = 0  # last sequence number sent (RFC 4303 3.3.3: first is 1)
        self.seq_max = 0xFFFFFFFFFFFFFFFF if esn else 0xFFFFFFFF
        self.window = ReplayWindow(replay_window, esn)
        self.counters = EspCounters()
        self._spi_bytes = spi.to_bytes(4, "big")
        self._is_aead = spec is not None
        self._into: tuple[AeadInto, AeadInto] | None = None
        if spec is not None:
            salt = spec.salt
            self._seal_aead, self._open_aead, self._into = aead_keyed(encr_id, encr_key[:-salt])
            self._salt = encr_key[-salt:]
        else:
            algo = algorithms.AES(encr_key)
            self._cbc_enc = Cipher(algo, modes.CBC(bytes(CBC_IV))).encryptor()
            self._cbc_dec = Cipher(algo, modes.CBC(bytes(CBC_IV))).decryptor()
            self._chain = bytes(CBC_IV)  # last ciphertext block output by _cbc_enc
            self._hmac = hmac.HMAC(integ_key, INTEG[integ_id][0]())
        self._align, self._iv_len, self.icv_len = align, iv_len, icv_len
        # overhead for MTU computations: header + IV + ICV + worst-case padding + 2 trailer octets
        self.overhead = 8 + iv_len + icv_len + align - 1 + 2
        self._min_len = 8 + iv_len + icv_len + align

    # -- outbound --------------------------------------------------------------------------------

    def seal(self, inner: bytes | bytearray, next_header: int = NEXT_HEADER_IPV4, now: float = 0.0) -> bytes:
        """Encapsulate one inner IP packet; returns the ESP packet (no UDP header)."""
        seq = self.seq_out + 1
        if seq > self.seq_max:
            # RFC 4303 3.3.3: the counter must not cycle; the SA has to be rekeyed
            raise SequenceExhaustedError(f"ESP SPI {self.spi:08x}: sequence numbers exhausted")
        self.seq_out = seq
        n = len(inner)
        padlen = -(n + 2) % self._align  # RFC 4303 2.4
        trailer = _PADS[padlen] + bytes((padlen, next_header))
        hdr = self._spi_bytes + _SEQ_HI.pack(seq & 0xFFFFFFFF)
        if self._is_aead:
            iv = _Q.pack(seq)
            aad = self._spi_bytes + iv if self.esn else hdr  # RFC 4106 5, RFC 4309 5, RFC 7634 2.1
            out = hdr + iv + self._seal_aead(self._salt + iv, inner + trailer, aad)
        else:
            # one block seq XOR C_prev: its ciphertext is the IV (see module docstring)
            seed = _QQ.pack(0, seq)
            nonce = (int.from_bytes(seed) ^ int.from_bytes(self._chain)).to_bytes(16)
            ct = self._cbc_enc.update(nonce + inner + trailer)
            self._chain = ct[-CBC_IV:]
            body = hdr + ct
            mac = self._hmac.copy()
            mac.update(body)
            if self.esn:
                mac.update(_SEQ_HI.pack(seq >> 32))  # RFC 4303 2.2.1: implicit high bits
            out = body + mac.finalize()[: self.icv_len]
        c = self.counters
        c.bytes_out += n
        c.packets_out += 1
        c.last_out = now
        return out

    @property
    def seals_into(self) -> bool:
        """Can `seal_into` run (an AEAD whose cipher writes into a caller's buffer)?"""
        return self._into is not None

    def seal_into(self, runs: Sequence[SealRun], out: bytearray, now: float = 0.0) -> tuple[int, list[list[int]]]:
        """`seal` for runs of inner packets, each laid out in a buffer of its own: a run is (plain, stride,
        lengths, next header), packet i of it at i * `stride` of `plain`, `lengths[i]` octets, each followed
        by at least 5 spare octets for its trailer. All packets of all runs have one length but each run's
        last, which may be shorter (a TSO super-packet's segments: `core_ike.io.offload.segment_into`).
        Sequence numbers follow the runs' order. The ESP packets are written into `out` (grown when too
        small) one every `size` octets, the runs one after the other, so that each run's packets lie back
        to back as one UDP_SEGMENT send wants them; returns `size` and each run's packet sizes.

        Header, IV, AAD and trailer (RFC 4303 2.4 padding, Pad Length, Next Header) are those of
        `seal`; headers and nonces are written for all packets at once (numpy rows), trailers once per
        run, then one AEAD call per packet encrypts straight into `out`."""
        # imported here: only the batch data plane needs numpy, and the mediation server, which
        # imports this package for its algorithm tables, would carry its ~12 MiB for nothing
        import numpy as np

        into = self._into
        if into is None or not runs or not all(r[2] for r in runs):
            raise LocalError("seal_into needs an AEAD with a full-length ICV and at least one packet")
        length = max(r[2][0] for r in runs)
        n = 0
        for _, stride, lengths, _ in runs:
            k = len(lengths)
            if lengths[-1] > length or lengths.count(length) < k - 1 or stride < length + 5:
                raise LocalError("seal_into: packets of one length (a run's last may be shorter) with room for the trailer")
            n += k
        seq0 = self.seq_out
        if seq0 + n > self.seq_max:
            raise SequenceExhaustedError(f"ESP SPI {self.spi:08x}: sequence numbers exhausted")
        icv, salt = self.icv_len, self._salt
        pad = -(length + 2) & 3
        clen = length + pad + 2
        size = 16 + clen + icv
        VIEWS.grow(out, n * size)
        # every packet's SPI | Seq | IV written as two big-endian 64-bit numpy columns over `out` (the
        # ciphertext goes between them next); the IV is the 64-bit counter, Seq its low 32 bits (RFC 4303 2.2)
        ivs = np.arange(seq0 + 1, seq0 + n + 1, dtype=np.uint64)
        VIEWS.column(out, 0, size, n, ">u8")[:] = (ivs & 0xFFFFFFFF) | (self.spi << 32)
        VIEWS.column(out, 8, size, n, ">u8")[:] = ivs
        # nonce = salt | IV (RFC 4106 4, RFC 4309 4, RFC 7634 2), written as two numpy columns; then one AEAD
        # call per packet through map() over slices cut once per layout (`VIEWS`), nonces and AADs as bytes
        nl = len(salt) + AEAD_IV
        nonces = VIEWS.nonces(n)
        np.ndarray((n, len(salt)), np.uint8, nonces, 0, (nl, 1))[:] = np.frombuffer(salt, np.uint8)
        VIEWS.column(nonces, len(salt), nl, n, ">u8")[:] = ivs
        # RFC 4106 5, RFC 4309 5, RFC 7634 2.1: AAD = SPI | Seq, or SPI | Seq-high | Seq-low with ESN
        aads: Sequence[Buffer] = ([self._spi_bytes + _Q.pack(q) for q in range(seq0 + 1, seq0 + n + 1)] if self.esn
                              else VIEWS.fields(out, 0, size, 8, n))
        nv, ov = VIEWS.fields(nonces, 0, nl, nl, n), VIEWS.rows(out, 16, size, clen + icv, n)
        encrypt, mo = into[0], memoryview(out)
        trailer = _PADS[pad] + bytes((pad, 0))
        sizes: list[list[int]] = []
        r = nbytes = 0
        for plain, stride, lengths, next_header in runs:
            m, tail = len(lengths) - 1, lengths[-1]
            if m:
                # the trailers of the run's full packets through one strided view of `plain`
                np.ndarray((m, pad + 2), np.uint8, plain, length, (stride, 1))[:] = np.frombuffer(
                    trailer[:-1] + bytes((next_header,)), np.uint8)
                _drain(map(encrypt, nv[r : r + m], VIEWS.rows(plain, 0, stride, clen, m), aads[r : r + m],
                           ov[r : r + m]))
            tail_pad = -(tail + 2) & 3
            p, o = m * stride, (r + m) * size
            plain[p + tail : p + tail + tail_pad + 2] = _PADS[tail_pad] + bytes((tail_pad, next_header))
            tail_size = 16 + tail + tail_pad + 2 + icv
            encrypt(nv[r + m], memoryview(plain)[p : p + tail + tail_pad + 2], aads[r + m], mo[o + 16 : o + tail_size])
            sizes.append([size] * m + [tail_size])
            nbytes += length * m + tail
            r += m + 1
        self.seq_out = seq0 + n
        c = self.counters
        c.bytes_out += nbytes
        c.packets_out += n
        c.last_out = now
        return size, sizes

    @property
    def seq_remaining(self) -> int:
        return self.seq_max - self.seq_out

    # -- inbound ---------------------------------------------------------------------------------

    def open_many(self, packets: list[bytes], now: float = 0.0) -> list[tuple[int, bytes] | EspError]:
        """`open` for a batch of packets of this SA: (next header, inner) or the error, per packet.

        The checks and their order are `open`'s (RFC 4303 3.4.3: replay check before the ICV, the
        window moves only after it); the AEAD case without ESN runs inline, the others through `open`."""
        out: list[tuple[int, bytes] | EspError] = []
        if not self._is_aead or self.esn:
            for p in packets:
                try:
                    out.append(self.open(p, now))
                except EspError as e:
                    out.append(e)
            return out
        c, window, dec, salt, pads = self.counters, self.window, self._open_aead, self._salt, _PADS
        check, update, unpack = window.check, window.update, _HDR.unpack_from
        min_len, body_fixed = self._min_len, 8 + AEAD_IV + self.icv_len
        nbytes = npkts = 0
        for p in packets:
            length = len(p)
            if length < min_len or (length - body_fixed) % AEAD_ALIGN:
                c.drop_truncated += 1
                out.append(EspTruncatedError(f"ESP packet of {length} octets", self.spi))
                continue
            seq = unpack(p)[1]
            if not check(seq):
                c.drop_replay += 1
                out.append(EspReplayError(f"ESP SPI {self.spi:08x}: replayed seq {seq}", self.spi, seq))
                continue
            try:
                plain = dec(salt + p[8:16], p[16:], p[:8])
            except InvalidTag:
                c.drop_bad_icv += 1
                out.append(EspIntegrityError(f"ESP SPI {self.spi:08x}: bad ICV", self.spi, seq))
                continue
            update(seq)
            padlen = plain[-2]
            body_len = len(plain) - 2 - padlen
            if body_len < 0 or (padlen and plain[body_len:-2] != pads[padlen]):
                c.drop_bad_padding += 1
                out.append(EspPaddingError(f"ESP SPI {self.spi:08x}: bad padding", self.spi, seq))
                continue
            nbytes += body_len
            npkts += 1
            out.append((plain[-1], plain[:body_len]))
        if npkts:
            c.bytes_in += nbytes
            c.packets_in += npkts
            c.last_in = now
        return out

    def open_into(self, buf: Buffer, size: int, count: int, tail: int, plain: bytearray,
                  now: float = 0.0) -> list[int] | None:
        """`open_many` for `count` ESP packets of this SA that lie back to back in `buf` (as one UDP_GRO
        read returns them: `size` octets each, the last `tail` octets), decrypted into `plain` (grown
        when too small) at i * `size`; returns the inner packets' lengths.

        Only the common case runs here: an AEAD with a full-length ICV, no ESN, every packet new to
        the replay window and in ascending order, every ICV, padding and next header (IPv4 or IPv6)
        right. Otherwise it returns None having changed nothing (window, counters): the caller then
        runs the packets through `open_many`, which drops and counts each bad one as `open` does
        (RFC 4303 3.4.3: the window moves only for packets whose ICV verified)."""
        into = self._into
        fixed = 8 + AEAD_IV + self.icv_len
        if (into is None or self.esn or count < 1 or tail > size or size < self._min_len or tail < self._min_len
                or (size - fixed) % AEAD_ALIGN or (tail - fixed) % AEAD_ALIGN or len(buf) < (count - 1) * size + tail):
            return None
        import numpy as np  # only the batch data plane comes here (see seal_into)

        VIEWS.grow(plain, count * size)
        heads = _run_heads(size, count).unpack_from(buf)  # SPI and Seq of every packet in one call
        seqs = heads[1::2]
        first, last = seqs[0], seqs[-1]
        if heads[0::2].count(self.spi) != count or first <= self.window.top:
            return None  # another SA (or a non-ESP datagram) inside, or a replay
        consecutive = last - first == count - 1 and seqs == tuple(range(first, last + 1))
        if not consecutive and any(b <= a for a, b in itertools.pairwise(seqs)):
            return None  # not in ascending order: the per-packet path checks each against the window
        # nonces (salt | IV, RFC 4106 4, RFC 4309 4, RFC 7634 2) as two numpy columns, the IVs copied from
        # the packets; then one AEAD call per packet through map() over slices cut once per layout
        # (`VIEWS`); AAD = SPI | Seq (RFC 4106 5)
        salt, clen, m = self._salt, size - fixed, count - 1
        sl = len(salt)
        nl = sl + AEAD_IV
        nonces = VIEWS.nonces(count)
        np.ndarray((count, sl), np.uint8, nonces, 0, (nl, 1))[:] = np.frombuffer(salt, np.uint8)
        np.ndarray((count, AEAD_IV), np.uint8, nonces, sl, (nl, 1))[:] = np.ndarray(
            (count, AEAD_IV), np.uint8, buf, 8, (size, 1))
        decrypt, o = into[1], m * size
        try:
            if m:
                _drain(map(decrypt, VIEWS.fields(nonces, 0, nl, nl, m), VIEWS.rows(buf, 16, size, size - 16, m),
                           VIEWS.fields(buf, 0, size, 8, m), VIEWS.rows(plain, 0, size, clen, m)))
            bv = memoryview(buf)
            decrypt(memoryview(nonces)[m * nl : count * nl], bv[o + 16 : o + tail], bv[o : o + 8],
                    memoryview(plain)[o : o + tail - fixed])
        except InvalidTag:
            return None
        # trailers (RFC 4303 2.4): all but the last packet have one length, so one pad length and one
        # next header; their padding and next header checked in one unpack against what they must be
        lengths: list[int] = []
        if count > 1:
            pad, nh = plain[clen - 2], plain[clen - 1]
            body = clen - 2 - pad
            if (body < 0 or nh not in (NEXT_HEADER_IPV4, NEXT_HEADER_IPV6)
                    or _run_trailers(size, count - 1, body, pad).unpack_from(plain) != (_PADS[pad], pad, nh) * (count - 1)):
                return None
            lengths = [body] * (count - 1)
        e = o + tail - fixed
        pad = plain[e - 2]
        body = tail - fixed - 2 - pad
        if body < 0 or plain[e - 1] not in (NEXT_HEADER_IPV4, NEXT_HEADER_IPV6) or plain[o + body : e - 2] != _PADS[pad]:
            return None
        lengths.append(body)
        if consecutive:
            self.window.update_run(first, count)
        else:
            for seq in seqs:
                self.window.update(seq)
        c = self.counters
        c.bytes_in += sum(lengths)
        c.packets_in += count
        c.last_in = now
        return lengths

    def open(self, packet: bytes, now: float = 0.0) -> tuple[int, bytes]:
        """Verify, decrypt and decapsulate; returns (next header, inner packet).

        Raises an `EspError` subclass (and counts it) when the packet is dropped.
        """
        c = self.counters
        length = len(packet)
        if length < self._min_len or (length - 8 - self._iv_len - self.icv_len) % self._align:
            c.drop_truncated += 1
            raise EspTruncatedError(f"ESP packet of {length} octets", self.spi)
        seq_lo = _HDR.unpack_from(packet)[1]
        window = self.window
        seq = window.infer_high(seq_lo)
        if not window.check(seq):  # RFC 4303 3.4.3: before the ICV check
            c.drop_replay += 1
            raise EspReplayError(f"ESP SPI {self.spi:08x}: replayed seq {seq}", self.spi, seq)
        view = memoryview(packet)
        if self._is_aead:
            aad = self._spi_bytes + _Q.pack(seq) if self.esn else view[:8]
            try:
                plain = self._open_aead(self._salt + view[8:16], view[16:], aad)
            except InvalidTag:
                c.drop_bad_icv += 1
                raise EspIntegrityError(f"ESP SPI {self.spi:08x}: bad ICV", self.spi, seq) from None
        else:
            end = length - self.icv_len
            mac = self._hmac.copy()
            mac.update(view[:end])
            if self.esn:
                mac.update(_SEQ_HI.pack(seq >> 32))
            # constant-time compare of the truncated ICV (RFC 4303 3.4.4.1)
            if not stdlib_hmac.compare_digest(mac.finalize()[: self.icv_len], view[end:]):
                c.drop_bad_icv += 1
                raise EspIntegrityError(f"ESP SPI {self.spi:08x}: bad ICV", self.spi, seq)
            plain = self._cbc_dec.update(view[8:end])[CBC_IV:]
        window.update(seq)  # only after the integrity check (RFC 4303 3.4.3)
        padlen = plain[-2]
        body_len = len(plain) - 2 - padlen
        if body_len < 0 or plain[body_len:-2] != _PADS[padlen]:
            c.drop_bad_padding += 1
            raise EspPaddingError(f"ESP SPI {self.spi:08x}: bad padding", self.spi, seq)
        c.bytes_in += body_len
        c.packets_in += 1
        c.last_in = now
        return plain[-1], plain[:body_len]
