"""mediation_client."""
