"""EAP (RFC 3748) for IKEv2 (RFC 7296 2.16): the packet codec and the methods Identity, MD5-Challenge
and MS-CHAPv2, as pure sans-IO state machines (randomness is an input)."""
