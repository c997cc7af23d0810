"""An admin's decisions, quarantine and evidence records."""
