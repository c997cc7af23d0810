"""Storage sweeps: walk a source (sources/), judge what was not judged before, act.

actions.py (quarantine / delete / release, exactly once); holder.py (the sweeps' quarantine as
a holder the admin's decisions reach); runner.py (one sweep or follow loop); progress.py (bar,
log lines, summary); metrics.py (the numbers /metrics reads). The commands that open a runtime
for a sweep (scan / apply / release) are the runtime's (runtime/sweeps.py); the sweep's tables
are the store's (store/sweeps.py).
"""
