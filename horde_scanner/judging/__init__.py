"""The Judge pipeline, persisted jobs, the policy dry run and second opinions."""
