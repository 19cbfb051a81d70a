"""medmgr_web."""
