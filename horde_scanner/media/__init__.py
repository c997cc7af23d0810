"""Bytes in, pixels out: type sniffing, safe decoding of stills, animations and video, hashes."""
