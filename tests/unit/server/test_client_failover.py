"""The client's list of mediation servers (mediation_client/failover.py): every address of every name
in turn, duplicates dropped, wrapping around; the connection's remote_addrs without the key; bad
values are one-line errors."""

from __future__ import annotations

import asyncio
import socket

import pytest

from core_ike.errors import LocalError
from core_ike.ike.config import IkeConfig
from mediation_client.failover import ServerList, check_servers


def test_addresses_in_turn_with_names_resolved() -> None:
    local = sorted({str(i[4][0]) for i in socket.getaddrinfo("localhost", None, type=socket.SOCK_DGRAM)})
    cfg = IkeConfig("medsrv", remote_addrs=["198.51.100.9"], mediation=True)

    async def main() -> None:
        sl = ServerList(["192.0.2.1", "localhost", "192.0.2.1", "no-such-host.invalid"])
        addrs = await sl.addresses(cfg)
        assert addrs[0] == "192.0.2.1" and sorted(addrs[1:]) == local  # the unresolvable name is skipped
        turns = [await sl.next(cfg) for _ in range(len(addrs) + 1)]
        assert turns == [*addrs, addrs[0]]
        assert [await ServerList().next(cfg) for _ in range(2)] == ["198.51.100.9"] * 2
        assert await ServerList().next(IkeConfig("x", remote_addrs=["%any"])) is None

    asyncio.run(main())


@pytest.mark.parametrize("bad", [[], "", [""], ["a b"], 5, ["x", 3]])
def test_bad_server_lists(bad: object) -> None:
    with pytest.raises(LocalError):
        check_servers("[client]", "servers", bad)
    assert check_servers("[client]", "servers", "med.example.net") == ["med.example.net"]
