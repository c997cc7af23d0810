"""The exception root: every error horde-scanner raises on purpose derives from
`HordeScannerError`, through one of two branches that say what a caller should do next.

    HordeScannerError
      RetryLater      cannot be done *now* (an upstream down, overloaded, the store away):
                      keep the work and try again, after `retry_after_s` when it is known.
                      A persisted job backs off and retries (judging/jobs.py).
      FinalError      will never succeed as asked (a refused image, a broken file, a decision
                      that cannot be carried out): record it, do not retry.
        InvalidInput  the caller's input is wrong (configuration, policy, a list, a file,
                      an argument): fix it and ask again.

`retry_later` tells the two apart on any instance (an error whose class cannot know, like
Lemmy's database, sets it per instance). The CLI turns each branch into one exit code
(cli/common.py, docs/cli.md).
"""

from __future__ import annotations


class HordeScannerError(Exception):
    """The root of horde-scanner's own errors."""

    # Whether trying again later may succeed (RetryLater: yes; FinalError: no).
    retry_later: bool = False


class RetryLater(HordeScannerError):
    """Cannot be done now; try again later (after `retry_after_s`, when known)."""

    retry_later = True

    def __init__(self, reason: str = "", retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class FinalError(HordeScannerError):
    """Will never succeed as asked; retrying does not help."""


class InvalidInput(FinalError):
    """The input is wrong (configuration, policy, a list, a file, an argument)."""
