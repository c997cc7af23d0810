"""Shared signals beyond the hash lists (hashlists/): image embeddings, their index, their
list format, publishing and subscriptions."""
