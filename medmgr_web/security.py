"""Password hashing for the portals (sessions: ``sessions.py``, throttling: ``throttle.py``).

New hashes are Argon2id (RFC 9106, memory-hard: an attacker with the database pays the memory for
every guess) in the PHC string format, with RFC 9106 §4's second recommended option (t = 3 passes,
m = 64 MiB, p = 4 lanes) and a random 16-byte salt.  scrypt hashes (``scrypt$n$r$p$salt$hash``)
verify too, so that databases and hash files holding them keep working;
``needs_rehash`` says when a hash should be replaced by a fresh Argon2id one after a login.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# explicit, not argon2-cffi's defaults, which differ between its versions (Debian 12 ships 21.1)
_HASHER = PasswordHasher(time_cost=3, memory_cost=64 * 1024, parallelism=4, hash_len=32, salt_len=16, type=Type.ID)
_SCRYPT_MAXMEM = 256 * 1024 * 1024


def hash_password(password: str, hasher: PasswordHasher | None = None) -> str:
    """A salted Argon2id hash, ``$argon2id$v=19$m=65536,t=3,p=4$<salt>$<hash>``."""
    return (hasher or _HASHER).hash(password)


def verify_password(password: str, stored: str) -> bool:
    """Does ``password`` match ``stored`` (Argon2 or scrypt)?  Malformed hashes never match."""
    if stored.startswith("scrypt$"):
        return _verify_scrypt(password, stored)
    try:
        return _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str, hasher: PasswordHasher | None = None) -> bool:
    """True when ``stored`` is not an Argon2id hash with the current parameters."""
    if not stored.startswith("$argon2id$"):
        return True
    try:
        return (hasher or _HASHER).check_needs_rehash(stored)
    except (InvalidHashError, ValueError):
        return True


def hash_scrypt(password: str, *, n: int = 2**15, r: int = 8, p: int = 1) -> str:
    """An scrypt hash in the accepted ``scrypt$n$r$p$salt$hash`` format (salt and hash in unpadded
    base64): for tests of databases holding such hashes."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=32)
    b64 = [base64.b64encode(x).decode("ascii").rstrip("=") for x in (salt, digest)]
    return f"scrypt${n}${r}${p}${b64[0]}${b64[1]}"


def _b64d(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _verify_scrypt(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        expected = _b64d(digest)
        got = hashlib.scrypt(password.encode("utf-8"), salt=_b64d(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=_SCRYPT_MAXMEM, dklen=len(expected) or 32)
    except (ValueError, TypeError, MemoryError):
        return False
    return hmac.compare_digest(got, expected)


# A hash to verify against when the account does not exist, so timing does not reveal logins.
DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
