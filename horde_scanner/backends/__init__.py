"""Ways of getting Signals for an image. See base.py for the contract."""
