"""Policy dry run: what a candidate policy would make of every stored verdict, offline.

Every verdict keeps the raw signals it was made from, so a candidate policy can re-judge the
whole history without asking any backend again. Nothing is written: the report says how many
verdicts would change, from what to what, with samples (hash, both labels and reasons, and the
caption / tags / scores that decided), and how the candidate stands against the admins'
decisions (allow, deny, confirm), the closest thing to ground truth an instance has.

    report = await run_diff(store, Policy.from_text(text), since=..., labels={"csam"})

The store is read in batches, newest first; each batch is parsed and judged in a worker thread
(the policy is compiled once), so a dry run inside the service does not stall the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from horde_scanner.policy import frames as framesignals
from horde_scanner.policy.rules import Policy
from horde_scanner.store.interfaces import AuditStore, VerdictStore
from horde_scanner.store.verdicts import SignalsRow
from horde_scanner.timefmt import iso
from horde_scanner.verdict import Label, Signals, Verdict, VerdictRoute


class PolicyDiffStore(VerdictStore, AuditStore, Protocol):
    """What a policy dry run reads."""


# Rows fetched and judged per trip: large enough that the thread hops cost nothing, small
# enough that a batch is a few tens of milliseconds of work.
BATCH_ROWS = 2000
# Decisions listed one by one in a report; the counts cover all of them.
MAX_DECISIONS_LISTED = 1000
# Audit events that are an admin's decision on a hash (the lists table keeps only the kind).
_DECISION_EVENTS = ("allow", "deny", "confirm")
_SKIP_NO_SIGNALS = "no stored signals (unreadable, backend error, or judged before signals)"
_SKIP_HASH_LIST = "decided by a hash-list match, not by the policy"
_SKIP_UNPARSABLE = "stored signals that cannot be read (written by another version?)"

Progress = Callable[[int, int], None]


@dataclass
class DiffReport:
    candidate_version: str
    baseline: str  # "stored" or "policy <version>"
    since: float | None
    labels: tuple[str, ...]
    reject_labels: tuple[str, ...]
    sample_size: int
    examined: int = 0
    judged: int = 0
    considered: int = 0  # judged, and from or to one of `labels` (all when none)
    unchanged: int = 0
    reasons_changed: int = 0  # same label, other reasons
    skipped: Counter[str] = field(default_factory=Counter)
    changes: Counter[tuple[str, str]] = field(default_factory=Counter)
    samples: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    decision_counts: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    @property
    def changed(self) -> int:
        return sum(self.changes.values())

    def as_dict(self) -> dict[str, Any]:
        kinds = sorted(self.changes.items(), key=lambda kv: (-kv[1], kv[0]))
        return {
            "candidate": {"version": self.candidate_version},
            "baseline": self.baseline,
            "filter": {
                "since": iso(self.since),
                "labels": list(self.labels),
            },
            "examined": self.examined,
            "judged": self.judged,
            "considered": self.considered,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "reasons_changed": self.reasons_changed,
            "skipped": dict(self.skipped),
            "changes": [
                {"from": old, "to": new, "count": n, "samples": self.samples.get((old, new), [])}
                for (old, new), n in kinds
            ],
            "decisions": {
                "reject_labels": list(self.reject_labels),
                "agree": self.decision_counts["agree"],
                "disagree": self.decision_counts["disagree"],
                "agreed_before": self.decision_counts["agreed_before"],
                "no_signals": self.decision_counts["no_signals"],
                "listed": len(self.decisions),
                "items": self.decisions,
            },
            "elapsed_s": round(self.elapsed_s, 3),
        }


def _agrees(decision: str, label: str, reject: Sequence[str]) -> bool:
    """An allow says "accept this here"; a deny or confirm says "this is csam"."""
    if decision == "allow":
        return label not in reject
    return label == Label.CSAM.value


def deciding_signals(
    signals: Signals, verdict: Verdict, tag_min_confidence: float
) -> dict[str, Any]:
    """The parts of the signals a reader needs to see why: nsfw flag, caption, strong tags and
    the top scores; for an animation or video, the flagged frames first (at most four)."""

    def still(s: Signals) -> dict[str, Any]:
        tags = sorted(
            ((t, c) for t, c in s.tags.items() if c >= tag_min_confidence), key=lambda kv: -kv[1]
        )
        scores = sorted(s.scores.items(), key=lambda kv: -kv[1])
        return {
            "backend": s.backend,
            "nsfw": s.nsfw,
            "caption": s.caption,
            "tags": dict(tags[:8]),
            "scores": {k: round(v, 4) for k, v in scores[:8]},
        }

    parts = framesignals.split(signals)
    if parts is None:
        return still(signals)
    flagged = set(verdict.frames or ())
    ordered = sorted(parts, key=lambda p: not flagged.intersection(p[0]))
    return {"frames": [{"frame": label, **still(s)} for _, label, s in ordered[:4]]}


class _Accumulator:
    """Sync, thread-confined: one batch of rows in, counters and samples updated."""

    def __init__(self, candidate: Policy, baseline: Policy | None, report: DiffReport) -> None:
        self.candidate = candidate
        self.baseline = baseline
        self.report = report
        self.wanted = frozenset(report.labels)
        self.reject = tuple(report.reject_labels)

    def add(self, rows: Iterable[SignalsRow]) -> None:
        report = self.report
        for sha, label, reasons_json, signals_json, route, policy_version, kind, by in rows:
            report.examined += 1
            if route == VerdictRoute.MATCH.value:
                report.skipped[_SKIP_HASH_LIST] += 1
                continue
            if not signals_json or label in (Label.UNREADABLE.value, Label.ERROR.value):
                report.skipped[_SKIP_NO_SIGNALS] += 1
                if kind is not None:
                    report.decision_counts["no_signals"] += 1
                continue
            try:
                signals = Signals.model_validate_json(signals_json)
                stored_reasons = json.loads(reasons_json)
            except ValueError:  # pydantic's ValidationError is one
                report.skipped[_SKIP_UNPARSABLE] += 1
                continue
            new = self.candidate.judge(signals)
            if self.baseline is not None:
                old = self.baseline.judge(signals)
                old_label, old_reasons = old.label.value, old.reasons
            else:
                old_label, old_reasons = label, stored_reasons
            report.judged += 1
            new_label = new.label.value
            if self.wanted and old_label not in self.wanted and new_label not in self.wanted:
                continue
            report.considered += 1
            if kind is not None:
                self._decision(sha, kind, by, old_label, new_label)
            if new_label == old_label:
                report.unchanged += 1
                if new.reasons != old_reasons:
                    report.reasons_changed += 1
                continue
            key = (old_label, new_label)
            report.changes[key] += 1
            samples = report.samples.setdefault(key, [])
            if len(samples) < report.sample_size:
                samples.append(
                    {
                        "sha256": sha,
                        "old_label": old_label,
                        "new_label": new_label,
                        "old_reasons": old_reasons,
                        "new_reasons": new.reasons,
                        "stored_policy": policy_version,
                        "decision": _decision_kind(kind),
                        "signals": deciding_signals(
                            signals, new, self.candidate.horde.tag_min_confidence
                        ),
                    }
                )

    def _decision(self, sha: str, kind: str, by: str | None, old: str, new: str) -> None:
        report = self.report
        decision = _decision_kind(kind) or kind
        agrees = _agrees(decision, new, self.reject)
        before = _agrees(decision, old, self.reject)
        report.decision_counts["agree" if agrees else "disagree"] += 1
        report.decision_counts["agreed_before"] += before
        if len(report.decisions) < MAX_DECISIONS_LISTED:
            report.decisions.append(
                {
                    "sha256": sha,
                    "decision": decision,
                    "by": by or "",
                    "old_label": old,
                    "new_label": new,
                    "agrees": agrees,
                    "agreed_before": before,
                }
            )


def _decision_kind(kind: str | None) -> str | None:
    # Refined to "confirm" later where the audit trail says the deny came from a review.
    return {"allow": "allow", "deny": "deny"}.get(kind) if kind else None


async def run_diff(
    store: PolicyDiffStore,
    candidate: Policy,
    *,
    baseline: Policy | None = None,
    since: float | None = None,
    labels: Iterable[str] = (),
    reject_labels: Iterable[str] = (Label.CSAM.value,),
    sample_size: int = 5,
    progress: Progress | None = None,
    batch_rows: int = BATCH_ROWS,
) -> DiffReport:
    """Re-judge the stored verdicts (judged since `since`) under `candidate`; write nothing.

    The baseline is what is stored (label and reasons as they were given), or `baseline`
    applied to the same signals, to compare two policy files."""
    started = time.monotonic()
    report = DiffReport(
        candidate_version=candidate.version,
        baseline="stored" if baseline is None else f"policy {baseline.version}",
        since=since,
        labels=tuple(dict.fromkeys(labels)),
        reject_labels=tuple(dict.fromkeys(reject_labels)),
        sample_size=sample_size,
    )
    acc = _Accumulator(candidate, baseline, report)
    total = 0
    if progress is not None:
        total = sum((await store.count_verdicts(since=since)).values())
        progress(0, total)
    batches = store.signal_batches(since=since, batch_rows=batch_rows)
    async with contextlib.aclosing(batches):
        async for rows in batches:
            await asyncio.to_thread(acc.add, rows)
            if progress is not None:
                progress(report.examined, max(total, report.examined))
    await _refine_decisions(store, report)
    report.elapsed_s = time.monotonic() - started
    return report


async def _refine_decisions(store: PolicyDiffStore, report: DiffReport) -> None:
    """A deny that a review's confirm made is reported as confirm, with who made it."""
    shas = [d["sha256"] for d in report.decisions]
    if not shas:
        return
    latest = await store.last_events(shas, _DECISION_EVENTS)
    for item in report.decisions:
        event, source = latest.get(item["sha256"], (None, None))
        if event == "confirm" and item["decision"] == "deny":
            item["decision"] = "confirm"
        if source and not item["by"]:
            item["by"] = source
    by_sha = {d["sha256"]: d["decision"] for d in report.decisions}
    for samples in report.samples.values():
        for sample in samples:
            if sample["sha256"] in by_sha:
                sample["decision"] = by_sha[sample["sha256"]]


def format_text(report: DiffReport) -> str:
    """The report as an admin reads it in a terminal."""
    d = report.as_dict()
    lines = [
        f"policy dry run: candidate {report.candidate_version} against {report.baseline} verdicts",
        f"examined {d['examined']:,}, re-judged {d['judged']:,}"
        + (f", of which {d['considered']:,} from or to {', '.join(report.labels)}"
           if report.labels else "")
        + f" ({report.elapsed_s:.1f} s)",
    ]  # fmt: skip
    if report.since is not None:
        lines.append(f"judged since {iso(report.since)}")
    for why, n in sorted(report.skipped.items()):
        lines.append(f"not re-judged: {n:,} {why}")
    lines.append(
        f"would change: {report.changed:,}; unchanged: {report.unchanged:,}"
        f" (of which {report.reasons_changed:,} with other reasons)"
    )
    for change in d["changes"]:
        lines.append("")
        lines.append(f"{change['from']} -> {change['to']}: {change['count']:,}")
        for s in change["samples"]:
            lines.append(f"  {s['sha256']}" + (f"  [{s['decision']}]" if s["decision"] else ""))
            lines.append(f"    signals: {_signals_line(s['signals'])}")
            lines.append(f"    was: {'; '.join(s['old_reasons']) or '-'}")
            lines.append(f"    now: {'; '.join(s['new_reasons']) or '-'}")
    dec = d["decisions"]
    total = dec["agree"] + dec["disagree"]
    lines.append("")
    lines.append(
        f"admin decisions: {total:,} re-judged; the candidate agrees with {dec['agree']:,} and "
        f"disagrees with {dec['disagree']:,} (the {report.baseline} verdicts agreed with "
        f"{dec['agreed_before']:,})"
        + (f"; {dec['no_signals']:,} without signals" if dec["no_signals"] else "")
    )
    listed = [i for i in dec["items"] if not (i["agrees"] and i["agreed_before"])]
    if listed:
        lines.append("  (each disagreement, and each agreement the stored verdicts lacked)")
    for item in listed:
        verb = "agrees" if item["agrees"] else "DISAGREES"
        lines.append(
            f"  {verb:<9} {item['decision']:<7} {item['sha256']}  {item['old_label']} -> "
            f"{item['new_label']}" + (f"  by {item['by']}" if item["by"] else "")
        )
    return "\n".join(lines)


def _signals_line(signals: dict[str, Any]) -> str:
    if "frames" in signals:
        return " | ".join(f"{f['frame']}: {_signals_line(f)}" for f in signals["frames"])
    parts = []
    if signals.get("nsfw") is not None:
        parts.append(f"nsfw={str(signals['nsfw']).lower()}")
    if signals.get("caption"):
        parts.append(f"caption {signals['caption']!r}")
    if signals.get("tags"):
        parts.append("tags " + ", ".join(f"{t} {c:.1f}" for t, c in signals["tags"].items()))
    if signals.get("scores"):
        parts.append("scores " + ", ".join(f"{k} {v:.3f}" for k, v in signals["scores"].items()))
    return "; ".join(parts) or "-"
