"""The aiohttp service: pict-rs validation, health."""
