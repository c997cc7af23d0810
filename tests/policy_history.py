"""A store's history for the policy dry-run tests: verdicts made by the previous bundled policy
(tests/data/policy-2026.11-2.toml) from BLIP-style captions, and a few admin decisions.

Each case says what the old policy made of it and what the current bundled policy must make of
it; the tests check that the diff reports exactly those flips and nothing else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from horde_scanner.media.hashing import sha256_hex
from horde_scanner.policy.frames import FRAMES_KEY
from horde_scanner.policy.rules import Policy
from horde_scanner.store.sqlite import Store
from horde_scanner.verdict import Label, Signals, Verdict, VerdictRoute

OLD_POLICY = Path(__file__).parent / "data" / "policy-2026.11-2.toml"
DAY = 86400.0


@dataclass(frozen=True)
class Case:
    name: str
    signals: Signals
    old: Label
    new: Label
    age_days: float = 1.0
    decision: str | None = None  # allow | deny | confirm
    media_type: str = "image/webp"
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", sha256_hex(self.name.encode()))


def _h(caption: str, nsfw: bool | None, **tags: float) -> Signals:
    return Signals(backend="horde", nsfw=nsfw, caption=caption, tags=tags)


def _video(*frames: tuple[int, Signals]) -> Signals:
    parts = [
        {"frames": [i], "label": f"frame {i} at {i / 2:.2f} s", "signals": s.model_dump()}
        for i, s in frames
    ]
    return Signals(backend="horde", extra={FRAMES_KEY: parts})


C, N, OK = Label.CSAM, Label.NSFW, Label.CLEAN

CASES: list[Case] = [
    # Adult content that BLIP words with a weak cue: csam before, nsfw now.
    Case("adult-girl-bed", _h("a naked girl laying on a bed", True), C, N, decision="allow"),
    Case("babydoll", _h("a woman in a baby doll nightie sitting on a couch", True), C, N),
    Case("topless-boy", _h("a topless boy standing in front of a mirror", False), C, N),
    Case("two-girls", _h("two girls kissing on a bed", True), C, N),
    Case("sexy-teen", _h("a sexy teen posing in lingerie", True), C, N, decision="confirm"),
    Case("uniform", _h("a woman in a school uniform with her breasts exposed", True), C, N),
    Case("old-flip", _h("arafed girl with her legs spread", True), C, N, age_days=60),
    # BLIP Large on the Horde is asked for at least 20 tokens: long, padded captions.
    Case(
        "long-adult",
        _h("there is a naked girl that is sitting on a bed with a pillow on her lap", None),
        C,
        N,
    ),
    Case(
        "clip-video",
        _video(
            (0, _h("a living room with a couch and a lamp", False)),
            (6, _h("a nude girl in the shower", True)),
        ),
        C,
        N,
        media_type="video/mp4",
    ),
    # Adult content without any underage word: nsfw before and now.
    Case("bikini", _h("arafed woman in a bikini posing on a beach", True), N, N, decision="allow"),
    Case("couple", _h("a naked man and a woman in a shower", True), N, N),
    # Strong cues, or two weak ones, or a weak one with a tag: csam before and now.
    Case("little-girl", _h("a little girl in a bathtub", True), C, C, decision="confirm"),
    Case("toddler", _h("a naked toddler on a beach", False), C, C),
    Case("young-boy", _h("a young boy with no shirt on", True), C, C),
    Case(
        "long-child",
        _h("there is a little boy that is standing in the water with no shirt on", True),
        C,
        C,
    ),
    Case("mother-daughter", _h("a girl and her daughter on a bed", True), C, C),
    Case("teenage-girl", _h("a teenage girl in her underwear", True), C, C),
    Case("weak-and-tag", _h("a nude girl sitting on a chair", True, lolicon=41.0), C, C),
    # No sexual content: clean whatever the age words.
    Case("park", _h("a little girl playing in a park", False), OK, OK),
    Case("skate", _h("a boy riding a skateboard down a street", False), OK, OK, decision="deny"),
    Case("bus", _h("a school bus parked on the side of the road", False), OK, OK),
    Case("mother", _h("a mother holding her baby in a kitchen", False), OK, OK),
    Case("kidney", _h("a diagram of a kidney", True), N, N),
]


async def fill(store: Store, old_policy: Policy | None = None) -> dict[str, Case]:
    """Write every case's verdict as the old policy made it, plus the admin decisions and two
    verdicts the policy cannot re-judge (a backend error and a hash-list match)."""
    policy = old_policy or Policy.load(OLD_POLICY)
    now = time.time()
    for case in CASES:
        verdict = policy.judge(case.signals)
        assert verdict.label is case.old, (case.name, verdict.label, verdict.reasons)
        verdict.judged_at = now - case.age_days * DAY
        await store.put_verdict(
            case.sha256, verdict, media_type=case.media_type, size=1000, source="upload:lemmy"
        )
        if case.decision == "allow":
            await store.set_list(case.sha256, "allow", note="adult", by="page:alice")
            await store.audit("allow", sha256=case.sha256, action="allow", source="page:alice")
        elif case.decision in ("deny", "confirm"):
            by = "cli" if case.decision == "deny" else "api:bob"
            await store.set_list(case.sha256, "deny", by=by)
            await store.audit(case.decision, sha256=case.sha256, action="deny", source=by)
    failed = Verdict(label=Label.ERROR, reasons=["horde: faulted"], backend="horde")
    await store.put_verdict(sha256_hex(b"error"), failed, source="upload:lemmy")
    matched = Verdict(
        label=Label.CSAM, reasons=["hash list 'x'"], backend="hashlist", route=VerdictRoute.MATCH
    )
    await store.put_verdict(sha256_hex(b"match"), matched, source="upload:lemmy")
    await store.flush_audit()
    return {case.name: case for case in CASES}


def expected_flips(max_age_days: float | None = None) -> dict[tuple[str, str], set[str]]:
    flips: dict[tuple[str, str], set[str]] = {}
    for case in CASES:
        if max_age_days is not None and case.age_days > max_age_days:
            continue
        if case.old is not case.new:
            flips.setdefault((case.old.value, case.new.value), set()).add(case.sha256)
    return flips
