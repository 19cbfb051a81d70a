"""Configuration from a database in strongSwan's `sql` plugin schema (docs/gateway.md)."""
