"""strongSwan-style one-line message summaries: `[ SA KE No N(NATD_S_IP) N(NATD_D_IP) ]`.

The abbreviations are the ones charon prints in its `generating ...` / `parsed ...` log lines, so
logs read the same as a strongSwan peer's. Unknown values print as numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..constants import CfgType, ExchangeType, NotifyType, PayloadType
from .payloads import CpPayload, EapPayload, NotifyPayload, Payload, SkfPayload, SkPayload

PAYLOAD_ABBREV: dict[int, str] = {
    PayloadType.SA: "SA",
    PayloadType.KE: "KE",
    PayloadType.IDi: "IDi",
    PayloadType.IDr: "IDr",
    PayloadType.CERT: "CERT",
    PayloadType.CERTREQ: "CERTREQ",
    PayloadType.AUTH: "AUTH",
    PayloadType.NONCE: "No",
    PayloadType.NOTIFY: "N",
    PayloadType.DELETE: "D",
    PayloadType.VENDOR_ID: "V",
    PayloadType.TSi: "TSi",
    PayloadType.TSr: "TSr",
    PayloadType.SK: "SK",
    PayloadType.CP: "CP",
    PayloadType.EAP: "EAP",
    PayloadType.SKF: "EF",
    PayloadType.ID_PEER: "IDp",
}

NOTIFY_ABBREV: dict[int, str] = {
    NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD: "CRIT",
    NotifyType.INVALID_IKE_SPI: "INVAL_IKE_SPI",
    NotifyType.INVALID_MAJOR_VERSION: "INVAL_MAJOR",
    NotifyType.INVALID_SYNTAX: "INVAL_SYN",
    NotifyType.INVALID_MESSAGE_ID: "INVAL_MID",
    NotifyType.INVALID_SPI: "INVAL_SPI",
    NotifyType.NO_PROPOSAL_CHOSEN: "NO_PROP",
    NotifyType.INVALID_KE_PAYLOAD: "INVAL_KE",
    NotifyType.AUTHENTICATION_FAILED: "AUTH_FAILED",
    NotifyType.SINGLE_PAIR_REQUIRED: "SINGLE_PAIR",
    NotifyType.NO_ADDITIONAL_SAS: "NO_ADD_SAS",
    NotifyType.INTERNAL_ADDRESS_FAILURE: "INT_ADDR_FAIL",
    NotifyType.FAILED_CP_REQUIRED: "FAIL_CP_REQ",
    NotifyType.TS_UNACCEPTABLE: "TS_UNACCEPT",
    NotifyType.INVALID_SELECTORS: "INVAL_SEL",
    NotifyType.UNACCEPTABLE_ADDRESSES: "UNACCEPT_ADDR",
    NotifyType.UNEXPECTED_NAT_DETECTED: "UNEXPECT_NAT",
    NotifyType.USE_ASSIGNED_HoA: "ASSIGNED_HoA",
    NotifyType.TEMPORARY_FAILURE: "TEMP_FAIL",
    NotifyType.CHILD_SA_NOT_FOUND: "NO_CHILD_SA",
    NotifyType.ME_CONNECT_FAILED: "ME_CONN_FAIL",
    NotifyType.INITIAL_CONTACT: "INIT_CONTACT",
    NotifyType.SET_WINDOW_SIZE: "SET_WINSIZE",
    NotifyType.ADDITIONAL_TS_POSSIBLE: "ADD_TS_POSS",
    NotifyType.IPCOMP_SUPPORTED: "IPCOMP_SUP",
    NotifyType.NAT_DETECTION_SOURCE_IP: "NATD_S_IP",
    NotifyType.NAT_DETECTION_DESTINATION_IP: "NATD_D_IP",
    NotifyType.COOKIE: "COOKIE",
    NotifyType.USE_TRANSPORT_MODE: "USE_TRANSP",
    NotifyType.HTTP_CERT_LOOKUP_SUPPORTED: "HTTP_CERT_LOOK",
    NotifyType.REKEY_SA: "REKEY_SA",
    NotifyType.ESP_TFC_PADDING_NOT_SUPPORTED: "ESP_TFC_PAD_N",
    NotifyType.NON_FIRST_FRAGMENTS_ALSO: "NON_FIRST_FRAG",
    NotifyType.MOBIKE_SUPPORTED: "MOBIKE_SUP",
    NotifyType.ADDITIONAL_IP4_ADDRESS: "ADD_4_ADDR",
    NotifyType.ADDITIONAL_IP6_ADDRESS: "ADD_6_ADDR",
    NotifyType.NO_ADDITIONAL_ADDRESSES: "NO_ADD_ADDR",
    NotifyType.UPDATE_SA_ADDRESSES: "UPD_SA_ADDR",
    NotifyType.COOKIE2: "COOKIE2",
    NotifyType.NO_NATS_ALLOWED: "NO_NATS",
    NotifyType.AUTH_LIFETIME: "AUTH_LFT",
    NotifyType.MULTIPLE_AUTH_SUPPORTED: "MULT_AUTH",
    NotifyType.ANOTHER_AUTH_FOLLOWS: "AUTH_FOLLOWS",
    NotifyType.REDIRECT_SUPPORTED: "REDIR_SUP",
    NotifyType.REDIRECT: "REDIR",
    NotifyType.REDIRECTED_FROM: "REDIR_FROM",
    NotifyType.EAP_ONLY_AUTHENTICATION: "EAP_ONLY",
    NotifyType.CHILDLESS_IKEV2_SUPPORTED: "CHDLESS_SUP",
    NotifyType.FRAGMENTATION_SUPPORTED: "FRAG_SUP",
    NotifyType.SIGNATURE_HASH_ALGORITHMS: "HASH_ALG",
    NotifyType.USE_PPK: "USE_PPK",
    NotifyType.USE_BEET_MODE: "BEET_MODE",
    # strongSwan's short names for the ME notifies (ME draft 4.4)
    NotifyType.ME_MEDIATION: "ME_MED",
    NotifyType.ME_ENDPOINT: "ME_EP",
    NotifyType.ME_CALLBACK: "ME_CB",
    NotifyType.ME_CONNECTID: "ME_CID",
    NotifyType.ME_CONNECTKEY: "ME_CKEY",
    NotifyType.ME_CONNECTAUTH: "ME_CAUTH",
    NotifyType.ME_RESPONSE: "ME_R",
}

CP_ABBREV: dict[int, str] = {
    CfgType.CFG_REQUEST: "CPRQ",
    CfgType.CFG_REPLY: "CPRP",
    CfgType.CFG_SET: "CPS",
    CfgType.CFG_ACK: "CPA",
}

CFG_ATTR_ABBREV: dict[int, str] = {
    1: "ADDR", 2: "MASK", 3: "DNS", 4: "NBNS", 6: "DHCP", 7: "VER", 8: "ADDR6", 10: "DNS6",
    12: "DHCP6", 13: "SUBNET", 14: "SUP", 15: "SUBNET6",
}

EAP_CODE_ABBREV: dict[int, str] = {1: "REQ", 2: "RES", 3: "SUCC", 4: "FAIL"}  # RFC 3748 4
EAP_TYPE_ABBREV: dict[int, str] = {
    1: "ID", 2: "NTF", 3: "NAK", 4: "MD5", 5: "OTP", 6: "GTC", 13: "TLS", 18: "SIM", 21: "TTLS",
    23: "AKA", 25: "PEAP", 26: "MSCHAPV2", 38: "TNC", 50: "AKA'",
}


def notify_name(ntype: int) -> str:
    name = NOTIFY_ABBREV.get(ntype)
    if name is not None:
        return name
    return ntype.name if isinstance(ntype, NotifyType) else str(int(ntype))


def _eap_name(data: bytes) -> str:
    if not data:
        return "EAP"
    parts = ["EAP", EAP_CODE_ABBREV.get(data[0], str(data[0]))]
    if data[0] in (1, 2) and len(data) > 4:
        parts.append(EAP_TYPE_ABBREV.get(data[4], str(data[4])))
    return "/".join(parts)


def notify_payload_name(ntype: int) -> str:
    """A Notify payload's name in a summary: `N(NATD_S_IP)`."""
    return f"N({notify_name(ntype)})"


def payload_name(p: Payload) -> str:
    if isinstance(p, NotifyPayload):
        return notify_payload_name(p.type)
    if isinstance(p, CpPayload):
        attrs = " ".join(CFG_ATTR_ABBREV.get(a.type, str(a.type)) for a in p.attributes)
        return f"{CP_ABBREV.get(p.cfg_type, f'CP{int(p.cfg_type)}')}({attrs})"
    if isinstance(p, EapPayload):
        return _eap_name(p.data)
    if isinstance(p, SkfPayload):
        return f"EF({p.number}/{p.total})"
    return PAYLOAD_ABBREV.get(p.ptype, f"UNKNOWN({int(p.ptype)})")


# A payload's name in a summary is a function of its type, and for a Notify of its Notify type alone;
# CP, EAP and SKF names also show their content. Summaries of payload sequences without those are
# kept by the sequence's key (Notify: 0x10000 + its type; else the payload type; -1: the SK payload
# still encrypted): a peer's messages repeat a few sequences. Bounded: a peer choosing Notify types
# must not grow it without end.
_CONTENT_NAMED = frozenset({PayloadType.CP, PayloadType.EAP, PayloadType.SKF})
_SUMMARIES: dict[tuple[int, ...], str] = {}
_SUMMARIES_MAX = 512


def summarize(payloads: Sequence[Payload], sk: SkPayload | SkfPayload | None, decrypted: bool) -> str:
    key = tuple([0x10000 + p.type if isinstance(p, NotifyPayload) else p.ptype for p in payloads])
    if sk is not None and not decrypted:
        key += (-1,) if isinstance(sk, SkPayload) else (PayloadType.SKF,)
    text = _SUMMARIES.get(key)
    if text is None:
        names = [payload_name(p) for p in payloads]
        if sk is not None and not decrypted:
            names.append(payload_name(sk))
        text = bracket(names)
        if len(_SUMMARIES) < _SUMMARIES_MAX and _CONTENT_NAMED.isdisjoint(key):
            _SUMMARIES[key] = text
    return text


def bracket(names: Sequence[str]) -> str:
    """The summary of a message whose payloads have these names (`payload_name`), in order."""
    return "[ " + " ".join(names) + (" ]" if names else "]")


def exchange_name(exchange: int) -> str:
    return exchange.name if isinstance(exchange, ExchangeType) else str(int(exchange))


def describe_message(exchange: int, response: bool, message_id: int, summary: str) -> str:
    kind = "response" if response else "request"
    return f"{exchange_name(exchange)} {kind} {message_id} {summary}"
