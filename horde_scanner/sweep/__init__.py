"""Storage sweeps: walk a store (local disk, S3, SSH), judge what was not judged before, act.

source.py (the Source interface and its contract) <- local.py, s3.py, ssh.py (one per kind of
store, with layout.py's shared tree walks); actions.py (quarantine / delete / release, exactly
once); runner.py (one sweep or follow loop); progress.py (bar, log lines, summary); app.py
(scan / apply / release as functions). The sweep's tables are the store's (store/sweeps.py).
"""
