"""The frozen value classes made per IKE_SA / CHILD_SA with an `__init__` of their own (their `__dict__` set
in one call, or each slot through its setter; core_ike/ike/events.py): the same fields, order and defaults
as the dataclass declares, frozen, the dataclass's equality, hash and `replace`, and no per-instance dict for
those kept as long as their SA."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
from typing import Any

import pytest

from core_ike.codec.payloads import TrafficSelector
from core_ike.crypto.keys import IkeKeys
from core_ike.ike import events as ev

CLASSES: list[type[Any]] = [ev.IkeSaEstablished, ev.ChildKeys, ev.ChildSaEstablished, IkeKeys, TrafficSelector]


def _sample(cls: type[Any], salt: int) -> dict[str, Any]:
    """A distinct value for every field (positional order kept)."""
    return {f.name: (f.name, salt, i) for i, f in enumerate(dataclasses.fields(cls))}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_signature_matches_fields(cls: type[Any]) -> None:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    fields = dataclasses.fields(cls)
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields, strict=True):
        assert f.default_factory is dataclasses.MISSING
        assert p.default == (inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_values_frozen_eq_hash_replace(cls: type[Any]) -> None:
    values = _sample(cls, 1)
    by_position = cls(*values.values())
    by_name = cls(**values)
    for name, value in values.items():
        assert getattr(by_position, name) == value
    assert dataclasses.asdict(by_position) == values
    assert by_position == by_name and hash(by_position) == hash(by_name)
    first = next(iter(values))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(by_position, first, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        delattr(by_position, first)
    other = dataclasses.replace(by_position, **{first: "changed"})
    assert getattr(other, first) == "changed" and other != by_position
    assert dataclasses.replace(other, **{first: values[first]}) == by_position
    assert cls(**_sample(cls, 2)) != by_position
    assert pickle.loads(pickle.dumps(by_position)) == by_position == copy.deepcopy(by_position)


def test_defaults_apply() -> None:
    e = ev.ChildSaEstablished("ike", 1, "net", 2, 3, ("a", 1), ("b", 2), False, ("x",), ("y",),
                              ev.ChildKeys(20, 128, 0, False, 1, 2, b"k", b"", b"K", b""), "AES_GCM_16_128")
    assert e.rekeyed_from is None and e.replay_window == 128
    i = ev.IkeSaEstablished("ike", 1, ("a", 1), ("b", 2), "me", "you", b"i" * 8, b"r" * 8, False)
    assert i.rekeyed_from is None


def test_ike_keys_repr_hides_keys() -> None:
    k = IkeKeys(b"d", b"ai", b"ar", b"ei", b"er", b"pi", b"pr")
    assert repr(k) == "IkeKeys(<secret>)" and k.sk_er == b"er"


@pytest.mark.parametrize("cls", [ev.ChildKeys, TrafficSelector], ids=lambda c: c.__name__)
def test_kept_values_have_slots_only(cls: type[Any]) -> None:
    value = cls(*_sample(cls, 3).values())
    assert not hasattr(value, "__dict__")
    with pytest.raises((AttributeError, TypeError)):
        object.__setattr__(value, "extra", 1)


def test_child_keys_repr_hides_keys() -> None:
    # a CHILD_SA's event or state printed in a log line must not carry its ESP keys
    k = ev.ChildKeys(20, 128, 0, False, 0x1234, 0x5678, b"\xaa" * 20, b"\xbb" * 32, b"\xcc" * 20, b"\xdd" * 32)
    text = repr(k)
    assert "spi_in=4660" in text and "encr_id=20" in text
    for secret in (b"\xaa" * 20, b"\xbb" * 32, b"\xcc" * 20, b"\xdd" * 32):
        assert repr(secret) not in text and secret.hex() not in text
    assert k.key_in == b"\xaa" * 20 and k == dataclasses.replace(k)
