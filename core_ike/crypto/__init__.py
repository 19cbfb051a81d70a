"""Crypto for the IKEv2 core (sans-IO, all primitives from `cryptography` / stdlib).

- `dh`: key exchange methods (MODP, ECP, Curve25519/448) with RFC 6989 peer checks
- `prf`: PRFs and prf+ (RFC 7296 2.13)
- `sk`: SK/SKF payload protectors (RFC 7296 3.14, RFC 5282, RFC 7634)
- `keys`: IKE / CHILD SA key derivation (RFC 7296 2.14, 2.17, 2.18)
- `auth`, `sigalg`: AUTH payload data (RFC 7296 2.15, RFC 4754, RFC 7427, RFC 8420), key ids
- `proposals`: strongSwan proposal strings, responder selection, log names
"""
