"""Wrong credentials, counted per client: past `max_failures` within `window_s` the client waits
(429) on that kind of credential, and no other client does.

The admin token has its own allowance (admin.max_failures); client ids, worker keys, publish
tokens and metrics tokens share server.auth_max_failures, each kind counted apart, so a typo in
one worker's key does not lock pict-rs out of the scan route. A locked-out client is refused
before its body is read and before its credential is compared: while it waits it learns nothing.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque

# Clients whose failures are remembered at once (the oldest is forgotten first).
_MAX_CLIENTS = 10_000


class FailureThrottle:
    def __init__(self, max_failures: int, window_s: float) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    @property
    def any_failures(self) -> bool:
        return bool(self._failures)

    def allowed(self, client: str) -> bool:
        recent = self._failures.get(client)
        if not recent:
            return True
        cutoff = time.monotonic() - self.window_s
        while recent and recent[0] < cutoff:
            recent.popleft()
        if not recent:
            del self._failures[client]
            return True
        return len(recent) < self.max_failures

    def failed(self, client: str) -> None:
        recent = self._failures.pop(client, None) or deque(maxlen=self.max_failures)
        recent.append(time.monotonic())
        self._failures[client] = recent  # most recent last
        while len(self._failures) > _MAX_CLIENTS:  # bounded, whatever an attacker sends
            self._failures.popitem(last=False)
