"""The status the mediation client writes into the client database (what the client manager shows):
never CONNECTING or UP when the daemon knows there is no tunnel, and always the reason."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from core_ike.ike import events as ev
from core_ike.me import events as mev
from med_db import data
from med_db.engine import make_session_factory, open_database
from med_db.models import STATUS_CONNECTING, STATUS_DOWN, STATUS_UP
from mediation_client.status import DbStatus


def _status(tmp_path: Path) -> tuple[DbStatus, Callable[[], tuple[int, str | None]]]:
    sessions = make_session_factory(open_database(f"sqlite:///{tmp_path / 'client.sqlite'}"))
    with sessions.begin() as s:
        conn = data.save_connection(s, None, alias="bob", spki=b"\x30\x00", keyid=b"\x01" * 20,
                                    local_subnet=None, remote_subnet=None, active=True)
        cid = conn.id
    st = DbStatus(sessions, {"bob": cid})

    def row() -> tuple[int, str | None]:
        with sessions() as s:
            c = data.get_connection(s, cid)
            assert c is not None
            return c.status, c.last_error
    return st, row


def test_status_follows_the_daemon(tmp_path: Path) -> None:
    st, row = _status(tmp_path)
    st.on_event(mev.MediatedConnecting("bob", "bob@med", 0.0))
    assert row() == (STATUS_CONNECTING, None)
    st.on_event(mev.PeerNotOnline("bob", "bob@med", 120.0))
    assert row() == (STATUS_CONNECTING, "peer offline: waiting for 'bob@med' to come online")
    # mediation succeeded but the peer refused the CHILD_SA: DOWN with the reason, not CONNECTING
    st.on_event(ev.ChildSaFailed("bob", "bob", "TS_UNACCEPTABLE from the peer (we proposed a === b)"))
    assert row() == (STATUS_DOWN, "CHILD_SA 'bob' failed: TS_UNACCEPTABLE from the peer "
                                  "(we proposed a === b)")
    st.on_event(mev.MediationFailed("bob", "bob@med", "checks failed: no check succeeded within 5.0 s"))
    assert row() == (STATUS_DOWN, "checks failed: no check succeeded within 5.0 s")
    st.on_event(ev.IkeSaFailed("bob", 7, "AUTHENTICATION_FAILED from the peer"))
    assert row() == (STATUS_DOWN, "IKE_SA failed: AUTHENTICATION_FAILED from the peer")


def test_up_until_the_last_sa_goes(tmp_path: Path) -> None:
    st, row = _status(tmp_path)
    keys = ev.ChildKeys(20, 128, 0, False, 1, 2, b"k" * 20, b"", b"k" * 20, b"")
    for ike in (3, 4):  # two IKE_SAs carry a CHILD_SA (both peers initiated at once)
        st.on_event(ev.ChildSaEstablished("bob", ike, "bob", ike, 1, ("a", 1), ("b", 2), True, (), (), keys, "x"))
    assert row() == (STATUS_UP, None)
    st.on_event(ev.ChildSaFailed("bob", "bob", "late failure of a third attempt"))
    assert row()[0] == STATUS_UP
    st.on_event(ev.IkeSaDeleted("bob", 3, "duplicate"))
    assert row()[0] == STATUS_UP
    st.on_event(ev.IkeSaDeleted("bob", 4, "deleted by the peer"))
    assert row() == (STATUS_DOWN, "deleted by the peer")
