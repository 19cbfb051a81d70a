"""An XFRM data plane for a kernel without INET_ESP (this machine's): the SA steps, which that kernel
refuses (XFRM_MSG_NEWSA: EPROTONOSUPPORT), are recorded instead; policies, virtual IPs and source
routes are the kernel's. The one stand-in of the XFRM tests; everything else they check is real,
including the data plane's own record of each SA (`installed_sa`) that a move rewrites."""

from __future__ import annotations

from core_ike.io.dataplane import Direction, SaParams
from core_ike.io.xfrm import XfrmDataPlane


class NoEspXfrm(XfrmDataPlane):
    def __init__(self) -> None:
        super().__init__()
        self.sas: list[tuple[int, Direction]] = []  # installed, by (SPI, direction)
        self.moves: list[tuple[SaParams, SaParams]] = []  # (old, new) of each SA moved

    def _sa_add(self, params: SaParams) -> None:
        self.sas.append((params.spi, params.direction))

    def _sa_del(self, dst: str, spi: int) -> None:
        self.sas = [s for s in self.sas if s[0] != spi]

    def _sa_move(self, old: SaParams, new: SaParams) -> None:
        assert (old.spi, old.direction) in self.sas
        self.moves.append((old, new))
