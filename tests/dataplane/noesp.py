"""An XFRM data plane for a kernel without INET_ESP (this machine's): the SA steps, which that kernel
refuses (XFRM_MSG_NEWSA: EPROTONOSUPPORT), are recorded instead; policies, virtual IPs and source
routes are the kernel's. The one stand-in of the XFRM tests; everything else they check is real."""

from __future__ import annotations

from core_ike.io.dataplane import Direction, SaParams
from core_ike.io.xfrm import XfrmDataPlane


class NoEspXfrm(XfrmDataPlane):
    def __init__(self) -> None:
        super().__init__()
        self.sas: list[tuple[int, Direction]] = []

    def install_sa(self, params: SaParams) -> None:
        self.sas.append((params.spi, params.direction))

    def delete_sa(self, spi: int, direction: Direction, dst: str | None = None) -> None:
        self.sas.remove((spi, direction))
