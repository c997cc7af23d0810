"""Perceptual hashes: the PDQ index and matcher, hash list storage, format, subscriptions."""
