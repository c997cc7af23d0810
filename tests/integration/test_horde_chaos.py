"""An erratic AI Horde judges everything, once (issue 20, part 1), scaled down to run in
seconds: 30 % of every call answered 5xx, 10 % of requests never finish, 10 % faulted, a
per-IP submit limit (the real one's shape, a shorter window), and the service killed with
SIGKILL half-way through the burst and started again on the same store.

bench/horde_chaos.py runs the full scenario (2,400 uploads of 120 images, 40 s request
timeout, 90 submits a minute) against this release and the previous one."""

from __future__ import annotations

from pathlib import Path

from horde_scanner.testing.chaos import ChaosPlan, run_chaos

ROOT = Path(__file__).resolve().parents[2]


def _plan() -> ChaosPlan:
    return ChaosPlan(
        distinct=16,
        uploads=96,
        concurrency=16,
        deadline_s=1.0,
        request_timeout_s=3.0,
        latency_s=(0.2, 0.6),
        # The Horde's limiter in a 5 s window: 12 submits; the service keeps to 10.
        post_limit=12,
        post_window_s=5.0,
        settle_s=45.0,
        sample_every_s=5.0,
        late_slack_s=1.0,
        service_env={
            "HORDE_SCANNER_HORDE__SUBMITS_PER_MIN": "10",
            "HORDE_SCANNER_HORDE__SUBMIT_WINDOW_S": "5",
            "HORDE_SCANNER_HORDE__PERFORMANCE_INTERVAL_S": "0",
            "HORDE_SCANNER_HORDE__PROBE_INTERVAL_S": "0.2",
            "HORDE_SCANNER_VALIDATION__JOB_MAX_BACKOFF_S": "2",
        },
    )


async def test_an_erratic_horde_judges_every_image_once_across_a_kill(tmp_path: Path):
    plan = _plan()
    result = await run_chaos(plan, ROOT, tmp_path, say=print)
    print(result)
    log = (tmp_path / "service.log").read_text(errors="replace")
    # The chaos was there: calls failed, requests stalled and faulted.
    assert result.injected_errors > 0
    # Every distinct image judged, within the settle time.
    assert result.judged == plan.distinct, log[-4000:]
    # At most one submission per image, except for requests that never finished or faulted.
    assert result.submissions <= result.submission_bound, result
    # Every answer within the deadline; no 429 after the restart (the window is in the store).
    assert result.past_deadline == 0
    assert result.rate_limited_after_restart == 0
    assert result.cut_by_kill >= 0 and result.answers == plan.uploads
