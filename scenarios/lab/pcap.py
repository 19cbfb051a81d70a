"""Reading the captures the lab takes (classic pcap files written by ``tcpdump -w``).

The classification follows RFC 3948 / RFC 7296 2.23: on the NAT-T port a 1-octet 0xFF payload is a NAT
keepalive, a payload starting with the 4-octet zero non-ESP marker is IKE, anything else is ESP-in-UDP
whose first 4 octets are the SPI. IP protocol 50 is plain ESP. Only IPv4 and IPv6 over Ethernet, Linux
cooked (v1/v2) and raw-IP link types are decoded; everything else is ``other``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from pathlib import Path

IKE_PORTS = frozenset({500})
NATT_PORTS = frozenset({4500})

KINDS = ("ike", "esp-in-udp", "esp", "keepalive", "other")

_LINKTYPE_ETHERNET = 1
_LINKTYPE_RAW = 101
_LINKTYPE_LINUX_SLL = 113
_LINKTYPE_LINUX_SLL2 = 276
_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_ETH_VLAN = 0x8100


@dataclass(frozen=True)
class Packet:
    time: float
    src: str
    sport: int | None
    dst: str
    dport: int | None
    kind: str                      # one of KINDS
    spi: int | None = None         # ESP SPI (esp, esp-in-udp)
    proto: int = 0                 # IP protocol number
    payload: bytes = b""           # UDP payload (marker included) or ESP packet

    def flow(self) -> tuple[str, int | None, str, int | None, str]:
        return (self.src, self.sport, self.dst, self.dport, self.kind)

    def __str__(self) -> str:
        spi = f" spi=0x{self.spi:08x}" if self.spi is not None else ""
        sp = f":{self.sport}" if self.sport is not None else ""
        dp = f":{self.dport}" if self.dport is not None else ""
        return f"{self.src}{sp} > {self.dst}{dp} {self.kind}{spi} len={len(self.payload)}"


@dataclass
class Capture:
    """A capture file and, once loaded, its packets."""

    path: Path
    packets: list[Packet] = field(default_factory=list)
    ike_ports: frozenset[int] = IKE_PORTS
    natt_ports: frozenset[int] = NATT_PORTS

    def load(self) -> list[Packet]:
        self.packets = read_pcap(self.path, self.ike_ports, self.natt_ports) if self.path.exists() else []
        return self.packets

    def flows(self) -> list[tuple[str, int | None, str, int | None, str]]:
        """(src, sport, dst, dport, kind) per packet, in capture order."""
        return [p.flow() for p in self.packets]

    def of_kind(self, *kinds: str) -> list[Packet]:
        return [p for p in self.packets if p.kind in kinds]

    def spis(self) -> set[int]:
        return {p.spi for p in self.packets if p.spi is not None}


def classify_udp(sport: int, dport: int, payload: bytes, ike_ports: frozenset[int] = IKE_PORTS,
                 natt_ports: frozenset[int] = NATT_PORTS) -> tuple[str, int | None]:
    """(kind, spi) of a UDP datagram by ports and content."""
    if sport in ike_ports or dport in ike_ports:
        return "ike", None
    if sport in natt_ports or dport in natt_ports:
        if payload == b"\xff":
            return "keepalive", None
        if len(payload) >= 4 and payload[:4] == b"\0\0\0\0":
            return "ike", None
        if len(payload) >= 8:
            return "esp-in-udp", struct.unpack_from("!I", payload)[0]
    return "other", None


def _ip_packet(ts: float, data: bytes, ike_ports: frozenset[int], natt_ports: frozenset[int]) -> Packet | None:
    if not data:
        return None
    version = data[0] >> 4
    if version == 4 and len(data) >= 20:
        ihl = (data[0] & 0x0F) * 4
        total = struct.unpack_from("!H", data, 2)[0] or len(data)
        proto = data[9]
        src = ".".join(str(b) for b in data[12:16])
        dst = ".".join(str(b) for b in data[16:20])
        frag = struct.unpack_from("!H", data, 6)[0] & 0x1FFF
        body = data[ihl:total]
        if frag:
            return Packet(ts, src, None, dst, None, "other", proto=proto, payload=body)
    elif version == 6 and len(data) >= 40:
        proto = data[6]
        src = str(ipaddress.IPv6Address(data[8:24]))
        dst = str(ipaddress.IPv6Address(data[24:40]))
        body = data[40:40 + struct.unpack_from("!H", data, 4)[0]]
    else:
        return None
    if proto == 17 and len(body) >= 8:
        sport, dport = struct.unpack_from("!HH", body)
        payload = body[8:]
        kind, spi = classify_udp(sport, dport, payload, ike_ports, natt_ports)
        return Packet(ts, src, sport, dst, dport, kind, spi, proto, payload)
    if proto == 50 and len(body) >= 8:
        return Packet(ts, src, None, dst, None, "esp", struct.unpack_from("!I", body)[0], proto, body)
    if proto in (6, 132) and len(body) >= 4:
        sport, dport = struct.unpack_from("!HH", body)
        return Packet(ts, src, sport, dst, dport, "other", proto=proto, payload=body)
    return Packet(ts, src, None, dst, None, "other", proto=proto, payload=body)


def _link_payload(linktype: int, frame: bytes) -> bytes | None:
    if linktype == _LINKTYPE_RAW:
        return frame
    if linktype == _LINKTYPE_ETHERNET:
        off, ethertype = 14, struct.unpack_from("!H", frame, 12)[0] if len(frame) >= 14 else 0
        if ethertype == _ETH_VLAN and len(frame) >= 18:
            off, ethertype = 18, struct.unpack_from("!H", frame, 16)[0]
    elif linktype == _LINKTYPE_LINUX_SLL and len(frame) >= 16:
        off, ethertype = 16, struct.unpack_from("!H", frame, 14)[0]
    elif linktype == _LINKTYPE_LINUX_SLL2 and len(frame) >= 20:
        off, ethertype = 20, struct.unpack_from("!H", frame, 0)[0]
    else:
        return None
    return frame[off:] if ethertype in (_ETH_IPV4, _ETH_IPV6) else None


def read_pcap(path: str | Path, ike_ports: frozenset[int] = IKE_PORTS,
              natt_ports: frozenset[int] = NATT_PORTS) -> list[Packet]:
    """Parse a classic pcap file (either byte order, µs or ns timestamps)."""
    data = Path(path).read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a classic pcap file (pcapng is not supported)")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0x0FFFFFFF
    packets: list[Packet] = []
    off = 24
    while off + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack_from(endian + "IIII", data, off)
        off += 16
        frame = data[off:off + caplen]
        off += caplen
        ts = sec + frac / (1e9 if nano else 1e6)
        ip = _link_payload(linktype, frame)
        pkt = _ip_packet(ts, ip, ike_ports, natt_ports) if ip else None
        if pkt:
            packets.append(pkt)
    return packets
