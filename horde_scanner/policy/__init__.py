"""Rules as data (the policy file) and frame sampling: what every backend reads, below them all."""
