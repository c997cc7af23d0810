"""The Judge pipeline, persisted jobs, the policy and per-frame signals."""
