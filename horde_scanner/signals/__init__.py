"""Shared signals: perceptual hashes (the PDQ index and matcher, hash lists: format, storage,
publishing, subscriptions) and image embeddings (encoder, index, list format, exchange)."""
