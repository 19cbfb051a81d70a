"""The remote-access gateway parts of strongSwan users know: configuration from strongSwan's SQL schema
(`gateway.sqlconf`), classic `ipsec.conf` / `ipsec.secrets` (`gateway.ipsecconf`) and the `ipsec`-style
command (`gateway.ipsec_cmd`). See docs/gateway.md."""
