"""mediation_server."""
