#!/usr/bin/env python3
"""Virtual IP pools with thousands of leases: a /16 (65534 addresses) in the database and in memory.

Database pool (gateway/sqlconf/pools.py, an SQLite file in a temporary directory):
- `ikeme-ipsec pool add` of the /16 (one row per address, as strongSwan's `ipsec pool --add` writes them);
- loading it into iked's mirror (DbVipPool.read) and the mirror's memory (tracemalloc, Python objects);
- allocations per second: 65534 distinct identities lease one address each (the event loop's part:
  in memory), then all are released and the same identities lease again (each gets its own back);
- the write-behind of those leases (DbVipPool.flush, one transaction): rows per second.
In-memory pools, in order: the gateway's (gateway/sqlconf/pools.py, iked with `config_db` or `ipsec_conf`,
`rightsourceip=10.3.0.0/16`) for every address, and iked's plain one (core_ike/ike/vips.py, TOML `pools`) for
the first `--memory-leases` addresses.

    bench/pool_scale.py                                   # 3 rounds
    bench/pool_scale.py --quick                           # smoke: a /22, 1 round
    bench/pool_scale.py --out bench/results/pool_scale.txt

No strongSwan side: charon's attr-sql plugin does one SQL transaction per lease on the IKE thread, the
mirror does none there; the figures are ours only.
"""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_io

ROOT = results_io.enter_repo(__file__)
from sqlalchemy import create_engine  # noqa: E402

from core_ike.ike.identity import Identity  # noqa: E402
from core_ike.ike.vips import VipPool  # noqa: E402
from gateway.sqlconf.pools import DbVipPool, PoolAdmin, parse_range  # noqa: E402


def db_round(subnet: str, tmp: Path) -> dict[str, float]:
    db = create_engine(f"sqlite:///{tmp}/pool.db")
    t0 = time.perf_counter()
    n = PoolAdmin(db).add("big", *parse_range(subnet), timeout=3600)
    add_s = time.perf_counter() - t0
    clock = [1_700_000_000.0]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    pool = DbVipPool(db, lambda: clock[0])
    t0 = time.perf_counter()
    pool.read()
    load_s = time.perf_counter() - t0
    ids = [Identity.parse(f"user{i}@example.org") for i in range(n)]
    t0 = time.perf_counter()
    got = [pool.lease(["big"], i) for i in ids]
    alloc_s = time.perf_counter() - t0
    mem = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert all(v is not None for v in got) and len(set(got)) == n
    t0 = time.perf_counter()
    writes = pool.flush()
    flush_s = time.perf_counter() - t0
    for v in got:
        assert v is not None
        pool.release(v, "bench")
    clock[0] += 60
    pool.flush()
    t0 = time.perf_counter()
    again = [pool.lease(["big"], i) for i in ids]
    realloc_s = time.perf_counter() - t0
    assert again == got  # each identity its own address back
    db.dispose()
    return {"n": n, "add": add_s, "load": load_s, "alloc_per_s": n / alloc_s, "realloc_per_s": n / realloc_s,
            "flush_rows_per_s": writes / flush_s, "mem_bytes_per_addr": mem / n}


def gateway_memory_round(subnet: str) -> float:
    """The gateway's in-memory pool (iked with ipsec.conf's rightsourceip=): every address of `subnet`."""
    pool = DbVipPool(None, time.time)
    n = ipaddress.ip_network(subnet).num_addresses - 2
    t0 = time.perf_counter()
    for _ in range(n):
        assert pool.lease([subnet], None) is not None
    return n / (time.perf_counter() - t0)


def memory_round(subnet: str, leases: int) -> float:
    pool = VipPool()
    ident = Identity.parse("bench@example.org")
    t0 = time.perf_counter()
    for _ in range(leases):
        assert pool.lease([subnet], ident) is not None
    return leases / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results_io.add_args(ap, rounds=3)
    ap.add_argument("--subnet", default=None, help="the pool (default 10.3.0.0/16; --quick: 10.3.0.0/22)")
    ap.add_argument("--memory-leases", type=int, default=None,
                    help="addresses leased from the in-memory pool (default 4000; --quick: 500)")
    args = ap.parse_args()
    header = results_io.start_header()
    rounds = results_io.rounds_of(args)
    subnet = args.subnet or ("10.3.0.0/22" if args.quick else "10.3.0.0/16")
    mem_leases = args.memory_leases or (500 if args.quick else 4000)
    size = ipaddress.ip_network(subnet).num_addresses - 2
    runs: list[dict[str, float]] = []
    mem_rates: list[float] = []
    gw_rates: list[float] = []
    for _r, side in results_io.interleave(rounds, ["database", "memory", "gateway-memory"]):
        if side == "database":
            tmp = Path(tempfile.mkdtemp(prefix="pool-scale-"))
            try:
                runs.append(db_round(subnet, tmp))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        elif side == "gateway-memory":
            gw_rates.append(gateway_memory_round(subnet))
        else:
            mem_rates.append(memory_round(subnet, mem_leases))
    header = results_io.finish_header(header, args.quick, rounds)
    sample = results_io.sample

    def col(key: str) -> list[float]:
        return [r[key] for r in runs]

    what = f"pool of {subnet} ({size} addresses), SQLite file"
    figures = [
        results_io.figure("db_pool_add", f"`ikeme-ipsec pool add` of a {subnet}, {what}", sample(col("add"), "s"),
                          readme=False, differences=["one INSERT per address in batches of 10000, one transaction"]),
        results_io.figure("db_pool_load", f"iked loading that pool into memory ({size} addresses)",
                          sample(col("load"), "s"), readme=False),
        results_io.figure("db_pool_memory", "memory of the loaded pool per address (Python objects, tracemalloc, "
                          "after every address was leased)", sample(col("mem_bytes_per_addr"), "bytes"),
                          readme=False),
        results_io.figure("db_pool_alloc", f"leases per second, {size} distinct identities, database pool",
                          sample(col("alloc_per_s"), "leases/s"), better="higher", readme=True,
                          differences=["in memory on the event loop; the rows are written behind (next figure)"]),
        results_io.figure("db_pool_realloc", "leases per second, the same identities again after a release "
                          "(each gets its own address back)", sample(col("realloc_per_s"), "leases/s"),
                          better="higher", readme=False),
        results_io.figure("db_pool_flush", "lease rows written behind per second (one transaction, worker thread)",
                          sample(col("flush_rows_per_s"), "rows/s"), better="higher", readme=False),
        results_io.figure("gateway_memory_pool_alloc", f"leases per second, iked with a gateway source, in-memory "
                          f"pool (rightsourceip={subnet}), all {size} addresses", sample(gw_rates, "leases/s"),
                          better="higher", readme=False,
                          differences=["gateway/sqlconf/pools.py: the lowest free address from a cursor and a heap"]),
        results_io.figure("memory_pool_alloc", f"leases per second, iked's plain in-memory pool (TOML pools = "
                          f"[\"{subnet}\"]), the first {mem_leases} addresses", sample(mem_rates, "leases/s"),
                          better="higher", readme=False,
                          differences=["core_ike/ike/vips.py scans the pool from its first address for every "
                                       "lease: the cost grows with the leases held"]),
    ]
    notes = [f"{rounds} interleaved rounds (database pool, plain in-memory pool, gateway in-memory pool); "
             "the machine is shared (load above)"]
    results_io.write_results(args.out, "pool_scale", header, figures, notes=notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
