"""Several mediation servers as one service: presence and ME_CONNECT forwarding over a shared engine
(docs/architecture.md, "Cluster"). `core` is the sans-IO part; `redis_bus` carries it over Redis."""
