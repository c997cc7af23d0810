"""/metrics in Prometheus text format, from a registry of this app's own (never the global one).

Counted as things happen: validation latency, answers by label/route/answer, deadline hits by
the on_timeout taken, judgements by label and backend, errors by kind. Read at scrape time
from the objects that hold them: each backend's own figures (its `metrics()`), jobs waiting,
backend up, the store up or away (and what waits in memory for it), notification counters,
sweep progress (horde_scanner.sweep.metrics).
"""

from __future__ import annotations

import time
from collections import Counter as PyCounter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from horde_scanner.backends.base import Backend, iter_backends
from horde_scanner.integrations.notify import Notifier
from horde_scanner.judging.judge import Outcome, Route
from horde_scanner.store.jobs import Job
from horde_scanner.store.outage import StoreHealth
from horde_scanner.sweep.metrics import SweepProgress
from horde_scanner.verdict import Label, Verdict

PREFIX = "horde_scanner"
# Validation answers must come well under pict-rs's 10 s; buckets resolve the cached path too.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 6, 8, 10, 30)
# Which answering path a backend's name stands for (a backend not listed keeps its own name).
BACKEND_ROUTES = {
    "horde": "horde",
    "prescreen": "prescreen",
    "nudenet": "prescreen",
    "local": "local",
    "clip": "local",
    "gpu": "local",
    "worker": "local",
}
_LIST_ROUTES = {Route.ALLOW: "list", Route.DENY: "list"}
# The route of an upload answered without being read (too many at once).
OVERLOAD = "overload"


def route_name(outcome: Outcome) -> str:
    if outcome.route in _LIST_ROUTES:
        return _LIST_ROUTES[outcome.route]
    if outcome.route is Route.BACKEND and outcome.verdict is not None:
        return BACKEND_ROUTES.get(outcome.verdict.backend, outcome.verdict.backend or "backend")
    return outcome.route.value


@dataclass
class Sources:
    """What the scrape-time collector reads; filled in once the services exist."""

    backend: Backend
    job_failures: Callable[[], PyCounter[str]]
    jobs_outstanding: Callable[[], int]
    backend_live: Callable[[], bool]
    notifier: Notifier | None
    sweeps: SweepProgress
    # The store's health (store/outage.py) and what waits in memory for it.
    store: StoreHealth | None = None
    store_kept: Callable[[], int] = lambda: 0
    store_waiting: Callable[[], int] = lambda: 0
    store_refused: Callable[[], int] = lambda: 0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            f"{PREFIX}_validation_seconds",
            "Time from a validation request's arrival to its answer.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.answers = Counter(
            f"{PREFIX}_answers",
            "Validation answers by verdict label, answering path and answer.",
            ["label", "route", "answer"],
            registry=self.registry,
        )
        self.deadline_hits = Counter(
            f"{PREFIX}_deadline_hits",
            "Validation requests answered by on_timeout because the deadline came first.",
            ["on_timeout"],
            registry=self.registry,
        )
        self.judged = Counter(
            f"{PREFIX}_judgements",
            "Judgements finished (uploads, sweeps, re-judging), by label and backend.",
            ["label", "backend"],
            registry=self.registry,
        )
        self.unjudged_uploads = Counter(
            f"{PREFIX}_unjudged_uploads",
            "Uploads answered without a verdict (body too slow, too large, overload...), by "
            "reason; each one is also an `unjudged` audit row.",
            ["reason"],
            registry=self.registry,
        )
        self.worker_answers = Counter(
            f"{PREFIX}_worker_answers",
            "Answers posted by remote workers: accepted, or why they were refused "
            "(unknown_job, not_holder, bad_worker_key, bad_answer).",
            ["outcome"],
            registry=self.registry,
        )
        self.errors: PyCounter[str] = PyCounter()
        self._answer_children: dict[tuple[str, str, str], Any] = {}
        self._hits = 0
        self._answered = 0
        self._sources: Sources | None = None
        self.registry.register(_ScrapeCollector(self))

    def bind(self, sources: Sources) -> None:
        self._sources = sources

    def observe_answer(self, outcome: Outcome, answer: str, elapsed_s: float) -> None:
        route = route_name(outcome)
        label = outcome.label.value if outcome.label else "none"
        self._count_answer(label, route, answer, elapsed_s)
        if route in ("cache", "list"):
            self._hits += 1
        if outcome.route is Route.TIMEOUT:
            self.deadline_hits.labels(on_timeout=answer).inc()

    def unjudged(self, reason: str) -> None:
        self.unjudged_uploads.labels(reason=reason).inc()

    def observe_overload(self, answer: str, elapsed_s: float) -> None:
        """An upload answered by on_timeout before it could even be read."""
        self._count_answer("none", OVERLOAD, answer, elapsed_s)

    def _count_answer(self, label: str, route: str, answer: str, elapsed_s: float) -> None:
        # The one count of validation answers: /metrics and the admin stats both read it.
        self.latency.observe(elapsed_s)
        key = (label, route, answer)
        child = self._answer_children.get(key)
        if child is None:  # labels() takes a lock and builds a key each time: once per kind
            child = self._answer_children[key] = self.answers.labels(
                label=label, route=route, answer=answer
            )
        child.inc()
        self._answered += 1

    def answer_counts(self) -> dict[str, int]:
        """Answers so far by "route:answer" (all labels together), for the admin stats."""
        counts: PyCounter[str] = PyCounter()
        for family in self.answers.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = f"{sample.labels['route']}:{sample.labels['answer']}"
                    counts[key] += int(sample.value)
        return dict(counts)

    def count_judgement(self, job: Job, verdict: Verdict, answered: str | None) -> None:
        """A judgement finished (the runtime's `on_judged`), from any entry point."""
        self.judged.labels(label=verdict.label.value, backend=verdict.backend or "none").inc()
        if verdict.label is Label.ERROR:
            self.error("backend_failed")
        elif verdict.label is Label.UNREADABLE:
            self.error("unreadable")

    def worker_answer(self, outcome: str) -> None:
        self.worker_answers.labels(outcome=outcome).inc()

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    @property
    def cache_hit_ratio(self) -> float:
        return self._hits / self._answered if self._answered else 0.0

    def collect_live(self) -> Iterator[Metric]:
        hit = GaugeMetricFamily(
            f"{PREFIX}_cache_hit_ratio",
            "Share of validation answers that came from the verdict cache or the lists.",
        )
        hit.add_metric([], self.cache_hit_ratio)
        yield hit
        src = self._sources
        errors = PyCounter(self.errors)
        if src is not None:
            errors.update(src.job_failures())
            if src.notifier is not None:
                errors["webhook"] += src.notifier.failed
        family = CounterMetricFamily(
            f"{PREFIX}_errors",
            "Errors by kind (requests, backends, decoding, webhook).",
            labels=["kind"],
        )
        for kind, n in sorted(errors.items()):
            family.add_metric([kind], n)
        yield family
        if src is None:
            return
        yield from _backend_metrics(src)
        yield from _store_metrics(src)
        yield from _notify_metrics(src.notifier)
        yield from _sweep_metrics(src.sweeps)


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def _backend_metrics(src: Sources) -> Iterator[Metric]:
    name = src.backend.name
    yield _gauge(
        "backend_up",
        "1 while the backend can take work.",
        float(src.backend_live()),
        {"backend": name},
    )
    yield _gauge(
        "jobs_outstanding", "Judgements waiting or running in this process.", src.jobs_outstanding()
    )
    # Each backend's own families (the AI Horde's queue, kudos, rate limits); a name once.
    seen: set[str] = set()
    for inner in iter_backends(src.backend):
        for family in inner.metrics():
            if family.name not in seen:
                seen.add(family.name)
                yield family


def _store_metrics(src: Sources) -> Iterator[Metric]:
    health = src.store
    if health is None:
        return
    yield _gauge("store_up", "1 while the store answers (0: away, answering from memory).",
                 float(health.available))  # fmt: skip
    yield _counter("store_outages", "Times the store went away.", health.outages)
    away = health.away_seconds
    if health.away_since is not None:
        away += max(0.0, time.time() - health.away_since)
    yield _counter("store_away_seconds", "Seconds the store was away, in all.", away)
    yield _gauge(
        "store_kept_verdicts",
        "Verdicts reached while the store was away, kept in memory until it is back.",
        src.store_kept(),
    )
    yield _gauge(
        "store_waiting_uploads",
        "Uploads held in memory until the store is back, to be looked up and judged.",
        src.store_waiting(),
    )
    yield _counter(
        "store_refused_uploads",
        "Uploads answered by on_timeout and never judged: the store was away and "
        "store.outage_upload_bytes full.",
        src.store_refused(),
    )


def _counter(name: str, doc: str, value: float) -> Metric:
    family = CounterMetricFamily(f"{PREFIX}_{name}", doc)
    family.add_metric([], value)
    return family


def _notify_metrics(notifier: Notifier | None) -> Iterator[Metric]:
    if notifier is None or not notifier.enabled:
        return
    family = CounterMetricFamily(
        f"{PREFIX}_notifications", "Webhook notifications by outcome.", labels=["outcome"]
    )
    for outcome, n in (
        ("sent", notifier.sent),
        ("failed", notifier.failed),
        ("dropped", notifier.dropped),
    ):
        family.add_metric([outcome], n)
    yield family
    yield _gauge("notifications_queued", "Notifications waiting to be sent.", notifier.queued)


def _sweep_metrics(sweeps: SweepProgress) -> Iterator[Metric]:
    runs = sweeps.runs()
    done = GaugeMetricFamily(
        f"{PREFIX}_sweep_files_done", "Files handled by a sweep.", labels=["sweep"]
    )
    total = GaugeMetricFamily(
        f"{PREFIX}_sweep_files_total", "Files a sweep has to handle.", labels=["sweep"]
    )
    skipped = GaugeMetricFamily(
        f"{PREFIX}_sweep_files_skipped", "Files a sweep skipped as judged before.", labels=["sweep"]
    )
    failed = GaugeMetricFamily(
        f"{PREFIX}_sweep_files_failed", "Files a sweep could not read.", labels=["sweep"]
    )
    running = GaugeMetricFamily(
        f"{PREFIX}_sweep_running", "1 while a sweep runs.", labels=["sweep"]
    )
    labels = GaugeMetricFamily(
        f"{PREFIX}_sweep_files_by_label",
        "Files judged by a sweep, by label.",
        labels=["sweep", "label"],
    )
    actions = GaugeMetricFamily(
        f"{PREFIX}_sweep_actions", "Actions a sweep took.", labels=["sweep", "action"]
    )
    for run in runs:
        done.add_metric([run.name], run.done)
        if run.total is not None:
            total.add_metric([run.name], run.total)
        skipped.add_metric([run.name], run.skipped)
        failed.add_metric([run.name], run.failed)
        running.add_metric([run.name], float(run.running))
        for label, n in run.labels.items():
            labels.add_metric([run.name, label], n)
        for action, n in run.actions.items():
            actions.add_metric([run.name, action], n)
    yield from (done, total, skipped, failed, running, labels, actions)


class _ScrapeCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.collect_live()

    def describe(self) -> list[Any]:
        # Names vary with what is bound (sweeps, notifier); describe nothing up front.
        return []


def exposition(metrics: Metrics) -> web.Response:
    return web.Response(
        body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
