"""Identity's own `__init__` (each slot through its setter, core_ike/ike/identity.py), as
tests/unit/ike/test_ike_event_init.py checks the events': the dataclass's init fields in order, frozen,
the dataclass's equality, hash, repr, `replace` and pickling, slots only, and the text form cached on
first use but never compared, hashed or shown by repr."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle

import pytest

from core_ike.constants import IdType
from core_ike.ike.identity import ANY, Identity


def test_signature_matches_init_fields() -> None:
    params = list(inspect.signature(Identity.__init__).parameters.values())[1:]
    fields = [f for f in dataclasses.fields(Identity) if f.init]
    assert [p.name for p in params] == [f.name for f in fields] == ["id_type", "data"]
    for p, f in zip(params, fields, strict=True):
        assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        assert p.default is inspect.Parameter.empty
    # the one field __init__ does not take starts as its declared default
    (text,) = [f for f in dataclasses.fields(Identity) if not f.init]
    assert text.name == "_text" and text.default is None and not text.compare and not text.repr


def test_values_frozen_eq_hash_repr_replace_pickle() -> None:
    by_position = Identity(IdType.FQDN, b"moon.strongswan.org")
    by_name = Identity(id_type=IdType.FQDN, data=b"moon.strongswan.org")
    assert by_position.id_type == IdType.FQDN and by_position.data == b"moon.strongswan.org"
    assert by_position == by_name and hash(by_position) == hash(by_name)
    assert hash(by_position) == hash((IdType.FQDN, b"moon.strongswan.org"))  # the dataclass's hash
    assert repr(by_position) == f"Identity(id_type={IdType.FQDN!r}, data=b'moon.strongswan.org')"
    for name in ("id_type", "data", "_text"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(by_position, name, None)
        with pytest.raises(dataclasses.FrozenInstanceError):
            delattr(by_position, name)
    other = dataclasses.replace(by_position, data=b"sun.strongswan.org")
    assert other.data == b"sun.strongswan.org" and other != by_position and str(other) == "sun.strongswan.org"
    assert dataclasses.replace(other, data=b"moon.strongswan.org") == by_position
    assert Identity(IdType.RFC822_ADDR, b"moon.strongswan.org") != by_position
    assert by_position != (IdType.FQDN, b"moon.strongswan.org")
    assert pickle.loads(pickle.dumps(by_position)) == by_position
    assert copy.deepcopy(by_position) == by_position == copy.copy(by_position)
    assert {by_position: 1}[by_name] == 1


def test_slots_only() -> None:
    ident = Identity(IdType.KEY_ID, b"\x01\x02")
    assert not hasattr(ident, "__dict__")
    with pytest.raises((AttributeError, TypeError)):
        object.__setattr__(ident, "extra", 1)


def test_text_cached_not_compared() -> None:
    a = Identity(IdType.IPV4_ADDR, bytes((192, 0, 2, 1)))
    b = Identity(IdType.IPV4_ADDR, bytes((192, 0, 2, 1)))
    assert a._text is None  # the cache starts empty
    assert str(a) == "192.0.2.1" and a._text == "192.0.2.1"
    first = str(a)
    assert str(a) is first  # made once
    assert a == b and hash(a) == hash(b) and repr(a) == repr(b) and b._text is None
    copied = pickle.loads(pickle.dumps(a))
    assert copied == a and str(copied) == "192.0.2.1"
    assert str(dataclasses.replace(a, data=bytes((192, 0, 2, 2)))) == "192.0.2.2"  # not the old text
    assert str(ANY) == "%any" and Identity(0, b"") == ANY and ANY.is_any
