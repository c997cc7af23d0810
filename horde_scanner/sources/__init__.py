"""Storage a sweep walks: local disk, S3-compatible object storage, a remote host over SSH.

source.py (the Source interface and its contract) <- local.py, s3.py, ssh.py (one per kind of
store, with layout.py's shared tree walks and pict-rs's identifier layouts); address.py (a SOURCE
argument or URL -> the Source it names). Nothing here judges or acts: the sweep does (sweep/).
"""
