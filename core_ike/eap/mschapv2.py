"""MS-CHAPv2 arithmetic (RFC 2759 8) and its key derivation (RFC 3079 3), pure functions.

Used by EAP-MSCHAPv2 (draft-kamath-pppext-eap-mschapv2). DES (RFC 2759 8.6) is single DES, given to
`cryptography` as TripleDES with three equal keys (the same permutation).
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from .md4 import md4

# RFC 2759 8.7
_MAGIC1 = b"Magic server to client signing constant"
_MAGIC2 = b"Pad to make it do more than one iteration"
# RFC 3079 3.4
_KEY_MAGIC1 = b"This is the MPPE Master Key"
_KEY_MAGIC2 = b"On the client side, this is the send key; on the server side, it is the receive key."
_KEY_MAGIC3 = b"On the client side, this is the receive key; on the server side, it is the send key."
_SHS_PAD1 = b"\x00" * 40
_SHS_PAD2 = b"\xf2" * 40


def nt_password_hash(password: str) -> bytes:
    """RFC 2759 8.3: MD4 of the password in little-endian UTF-16 (Unicode)."""
    return md4(password.encode("utf-16-le"))


def challenge_hash(peer_challenge: bytes, auth_challenge: bytes, username: bytes) -> bytes:
    """RFC 2759 8.2: the first 8 octets of SHA1(PeerChallenge | AuthenticatorChallenge | UserName)."""
    return hashlib.sha1(peer_challenge + auth_challenge + username).digest()[:8]


def _des_key(k7: bytes) -> bytes:
    """RFC 2759 8.6: spread 56 key bits over 8 octets (the parity bits are ignored by DES)."""
    n = int.from_bytes(k7, "big")
    return bytes(((n >> (49 - 7 * i)) & 0x7F) << 1 for i in range(8))


def _des(key7: bytes, block: bytes) -> bytes:
    k = _des_key(key7)
    enc = Cipher(TripleDES(k + k + k), modes.ECB()).encryptor()  # RFC 2759 8.6 mandates DES-ECB
    return enc.update(block) + enc.finalize()


def challenge_response(challenge: bytes, password_hash: bytes) -> bytes:
    """RFC 2759 8.5: three DES encryptions of the challenge under the zero-padded 21-octet hash."""
    z = password_hash + b"\x00" * 5
    return _des(z[0:7], challenge) + _des(z[7:14], challenge) + _des(z[14:21], challenge)


def generate_nt_response(auth_challenge: bytes, peer_challenge: bytes, username: bytes, password: str) -> bytes:
    """RFC 2759 8.1: the 24-octet NT-Response."""
    return challenge_response(challenge_hash(peer_challenge, auth_challenge, username), nt_password_hash(password))


def authenticator_response(password: str, nt_response: bytes, peer_challenge: bytes, auth_challenge: bytes,
                           username: bytes) -> bytes:
    """RFC 2759 8.7: "S=" followed by 40 upper-case hex digits."""
    hh = md4(nt_password_hash(password))
    digest = hashlib.sha1(hh + nt_response + _MAGIC1).digest()
    digest = hashlib.sha1(digest + challenge_hash(peer_challenge, auth_challenge, username) + _MAGIC2).digest()
    return b"S=" + digest.hex().upper().encode()


def check_authenticator_response(expected: bytes, received: bytes) -> bool:
    return hmac.compare_digest(expected, received[:42])


def master_key(password: str, nt_response: bytes) -> bytes:
    """RFC 3079 3.4 GetMasterKey."""
    hh = md4(nt_password_hash(password))
    return hashlib.sha1(hh + nt_response + _KEY_MAGIC1).digest()[:16]


def asymmetric_start_key(mk: bytes, is_send: bool, is_server: bool) -> bytes:
    """RFC 3079 3.4 GetAsymmetricStartKey, 16 octets (the 128-bit key)."""
    magic = _KEY_MAGIC3 if is_send == is_server else _KEY_MAGIC2
    return hashlib.sha1(mk + _SHS_PAD1 + magic + _SHS_PAD2).digest()[:16]


def msk(password: str, nt_response: bytes) -> bytes:
    """The EAP-MSCHAPv2 MSK: the client's send key then its receive key (RFC 3079 3.4, as EAP
    implementations lay it out: MasterSendKey | MasterReceiveKey of the peer), 32 octets; the
    same octets on both sides, as RFC 7296 2.16 requires of the key the final AUTH is computed with."""
    mk = master_key(password, nt_response)
    return asymmetric_start_key(mk, True, False) + asymmetric_start_key(mk, False, False)
