"""Sans-IO IKEv2 core (RFC 7296) with strongSwan's mediation extension."""
