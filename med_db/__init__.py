"""med_db."""
