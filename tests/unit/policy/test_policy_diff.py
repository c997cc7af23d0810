"""Weak and strong underage cues, and the policy dry run (`policy check`, `policy diff`)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from horde_scanner.cli import main
from horde_scanner.cli.policy import _Bar
from horde_scanner.policy.rules import Policy, PolicyError
from horde_scanner.store.sqlite import Store
from horde_scanner.verdict import Label, Signals
from tests.policy_history import CASES, OLD_POLICY, expected_flips, fill

BUNDLED = Path(__file__).parents[3] / "horde_scanner" / "data" / "policy.toml"
FLIPS = sum(len(shas) for shas in expected_flips().values())


def judge(caption: str, nsfw: bool | None = True, **tags: float) -> tuple[Label, list[str]]:
    verdict = Policy.load().judge(Signals(backend="horde", nsfw=nsfw, caption=caption, tags=tags))
    return verdict.label, verdict.reasons


# -- the rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "caption",
    [
        "a naked girl laying on a bed",
        "a topless boy standing in front of a mirror",
        "a sexy teen posing in lingerie",
        "a woman in a baby doll nightie",
        "a nude schoolgirl",
        "a naked school girl",  # the two-word form is one weak cue, like "schoolgirl"
        "two naked girls and another girl",  # plural and singular are the same word
    ],
)
def test_a_weak_cue_alone_is_nsfw_and_says_so(caption: str):
    label, reasons = judge(caption)
    assert label is Label.NSFW
    assert any("weak cue" in r and "not enough for csam" in r for r in reasons), reasons


@pytest.mark.parametrize(
    "caption, tags",
    [
        ("a little girl in a bathtub", {}),
        ("a naked toddlers at the beach", {}),
        ("a young boy with no shirt on", {}),
        ("a little-girl on a bed", {}),  # a hyphen between a phrase's words
        ("two kids, naked", {}),
        ("a naked CHILD", {}),
        ("a drawing", {"lolicon": 40.0}),
    ],
)
def test_strong_cues_still_make_csam(caption: str, tags: dict[str, float]):
    label, reasons = judge(caption, **tags)
    assert label is Label.CSAM, reasons
    assert not any("not enough" in r for r in reasons)


@pytest.mark.parametrize(
    "caption, tags, why",
    [
        ("a girl and her daughter on a bed", {}, "two distinct weak words"),
        ("a teenage girl in her underwear", {}, "two distinct weak words"),
        ("a nude girl sitting on a chair", {"lolicon": 41.0}, "a weak word and an underage tag"),
        ("a naked little girl and a boy", {}, "a strong phrase and a weak word"),
    ],
)
def test_a_weak_cue_with_another_cue_is_csam(caption: str, tags: dict[str, float], why: str):
    label, reasons = judge(caption, **tags)
    assert label is Label.CSAM, why
    assert not any("not enough" in r for r in reasons)


def test_a_weak_cue_with_a_clip_or_worker_age_score_is_csam():
    policy = Policy.load()
    clip = {"clip:a photo of a child": 0.30, "clip:a photo of an adult woman": 0.18}
    weak = Signals(backend="hybrid", nsfw=True, caption="a girl on a bed", scores=clip)
    assert policy.judge(weak).label is Label.CSAM
    worker = Signals(backend="w", caption="a girl", scores={"worker:is_csam": 1.0})
    assert policy.judge(worker).label is Label.CSAM


def test_word_boundaries():
    # Neither "kid" in kidney, "son" in songs/Mason, nor "girl" in girlfriend is a word.
    for caption in ("a kidney on a plate", "Mason singing songs", "his girlfriend"):
        label, reasons = judge(caption)
        assert label is Label.NSFW and not any("caption word" in r for r in reasons), caption
    # A weak word inside a strong phrase is not counted a second time.
    label, reasons = judge("a naked little girl")
    assert label is Label.CSAM
    assert reasons == [
        "horde: nsfw form is true",
        "horde: caption word 'naked'",
        "horde: caption word 'little girl'",
    ]


def test_no_sexual_content_is_clean_whatever_the_age_words():
    assert judge("a little girl playing in a park", nsfw=False)[0] is Label.CLEAN
    assert judge("a boy and a girl at school", nsfw=False) == (Label.CLEAN, [])


def test_bundled_policy_version_was_bumped():
    assert Policy.load().version != Policy.load(OLD_POLICY).version


@pytest.mark.parametrize(
    "text, named",
    [
        ('version = "x"\n[horde]\nweak_underage_words = "girl"\n', "weak_underage_words"),
        ('version = "x"\n[horde]\nweak_underage_words = ["girl", ""]\n', "weak_underage_words"),
        ('version = "x"\n[horde]\nweak_underage_word = ["girl"]\n', "weak_underage_word"),
        (
            'version = "x"\n[horde]\nunderage_words = ["girl"]\nweak_underage_words = ["Girl"]\n',
            "weak_underage_words",
        ),
        ('version = "x"\n[horde]\ntrust_nsfw_flag = "yes"\n', "trust_nsfw_flag"),
        ('version = "x"\n[horde]\ntag_min_confidence = "10"\n', "tag_min_confidence"),
        ('version = "x"\n[clip]\nunderage_threshold = true\n', "underage_threshold"),
        ('version = "x"\n[workers]\ntrust_is_csam = 1\n', "trust_is_csam"),
        ('version = "x"\nhorde = 3\n', "[horde]"),
        ('version = "x"\n[hord]\n', "hord"),
        ("[horde]\n", "version"),
        ('version = "x"\n[horde\n', "uploaded policy"),
    ],
)
def test_malformed_policies_are_refused_naming_the_key(text: str, named: str):
    with pytest.raises(PolicyError) as err:
        Policy.from_text(text)
    assert named in str(err.value)


# -- policy check ---------------------------------------------------------------------------


def test_policy_check_cli(tmp_path: Path):
    runner = CliRunner()
    ok = runner.invoke(main, ["policy", "check", str(BUNDLED)])
    assert ok.exit_code == 0, ok.output
    assert "policy 2026.12-1 is valid" in ok.output and "15 weak underage words" in ok.output
    bad = tmp_path / "bad.toml"
    bad.write_text('version = "mine"\n[horde]\nweak_underage_words = ["girl", 3]\n')
    result = runner.invoke(main, ["policy", "check", str(bad)])
    assert result.exit_code == 2
    assert "`weak_underage_words` must be a list of non-empty strings" in result.output
    assert str(bad) in result.output and "Traceback" not in result.output
    missing = runner.invoke(main, ["policy", "check", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "nope.toml" in missing.output


# -- policy diff ----------------------------------------------------------------------------


@pytest.fixture
def history(tmp_path: Path) -> Path:
    db = tmp_path / "history.db"

    async def build() -> None:
        async with await Store.open(db) as store:
            await fill(store)

    asyncio.run(build())
    return db


def _diff(db: Path, *args: str) -> dict:
    cmd = ["--db", str(db), "policy", "diff", *args, "--json", "--samples", "50"]
    result = CliRunner().invoke(main, cmd)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _flips(report: dict) -> dict[tuple[str, str], set[str]]:
    return {(c["from"], c["to"]): {s["sha256"] for s in c["samples"]} for c in report["changes"]}


def test_diff_old_to_new_bundled_reports_exactly_the_expected_flips(history: Path):
    before = asyncio.run(_snapshot(history))
    report = _diff(history, str(BUNDLED))
    assert report["candidate"]["version"] == Policy.load().version
    assert report["baseline"] == "stored"
    assert _flips(report) == expected_flips()
    assert FLIPS == 9 and report["changed"] == FLIPS and report["examined"] == len(CASES) + 2
    assert report["judged"] == len(CASES) and report["unchanged"] == len(CASES) - FLIPS
    assert sorted(report["skipped"].values()) == [1, 1]  # a backend error, a hash-list match
    sample = next(
        s
        for c in report["changes"]
        for s in c["samples"]
        if s["signals"].get("caption") == "a naked girl laying on a bed"
    )
    assert sample["old_label"] == "csam" and sample["new_label"] == "nsfw"
    assert "horde: caption word 'girl'" in sample["old_reasons"]
    assert any("not enough for csam" in r for r in sample["new_reasons"])
    assert sample["signals"]["nsfw"] is True and sample["decision"] == "allow"
    video = next(s for c in report["changes"] for s in c["samples"] if "frames" in s["signals"])
    assert video["signals"]["frames"][0]["caption"] == "a nude girl in the shower"
    # A dry run writes nothing.
    assert asyncio.run(_snapshot(history)) == before


async def _snapshot(db: Path) -> list[tuple[str, str, str, tuple[str, ...]]]:
    async with await Store.open(db) as store:
        rows = [
            (v.sha256, v.verdict.label.value, v.verdict.policy_version, tuple(v.verdict.reasons))
            async for v in store.iter_verdicts()
        ]
        return sorted(rows)


def test_diff_reports_admin_decisions_as_agreements_and_disagreements(history: Path):
    decisions = _diff(history, str(BUNDLED))["decisions"]
    by_sha = {d["sha256"]: d for d in decisions["items"]}
    cases = {c.name: c for c in CASES}
    assert set(by_sha) == {c.sha256 for c in CASES if c.decision}
    # Allowed adult content the old policy called csam: the candidate agrees, the old did not.
    allowed = by_sha[cases["adult-girl-bed"].sha256]
    assert allowed["decision"] == "allow" and allowed["by"] == "page:alice"
    assert (allowed["agrees"], allowed["agreed_before"]) == (True, False)
    assert by_sha[cases["bikini"].sha256]["agrees"] is True
    # An admin confirmed this one as csam; on a weak cue alone the candidate says nsfw.
    confirmed = by_sha[cases["sexy-teen"].sha256]
    assert confirmed["decision"] == "confirm" and confirmed["by"] == "api:bob"
    assert (confirmed["agrees"], confirmed["agreed_before"]) == (False, True)
    assert by_sha[cases["little-girl"].sha256]["agrees"] is True
    denied = by_sha[cases["skate"].sha256]
    assert denied["decision"] == "deny" and denied["agrees"] is False
    assert (decisions["agree"], decisions["disagree"], decisions["agreed_before"]) == (3, 2, 3)


def test_diff_since_label_and_against(history: Path):
    recent = _diff(history, str(BUNDLED), "--since", "30d")
    assert _flips(recent) == expected_flips(max_age_days=30)
    assert recent["examined"] == len(CASES) + 1  # the 60-day-old verdict is left out
    only_clean = _diff(history, str(BUNDLED), "--label", "clean")
    assert only_clean["changes"] == [] and only_clean["considered"] == sum(
        c.new is Label.CLEAN for c in CASES
    )
    only_csam = _diff(history, str(BUNDLED), "--label", "csam")
    assert _flips(only_csam) == expected_flips()
    # Comparing two policy files over the same signals gives the same flips.
    against = _diff(history, str(BUNDLED), "--against", str(OLD_POLICY))
    assert against["baseline"] == "policy 2026.11-2"
    assert _flips(against) == expected_flips()
    # The old policy against itself changes nothing.
    assert _diff(history, str(OLD_POLICY), "--against", str(OLD_POLICY))["changed"] == 0


def test_diff_text_report_and_no_progress_bar_off_a_terminal(history: Path):
    result = CliRunner().invoke(main, ["--db", str(history), "policy", "diff", str(BUNDLED)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"would change: {FLIPS}" in out and f"csam -> nsfw: {FLIPS}" in out
    # Five samples by default, each with the signals that decided and both sets of reasons.
    assert out.count("\n    signals: ") == 5 and out.count("caption '") >= 5
    assert out.count("\n    was: ") == 5 and out.count("not enough for csam") == 5
    assert "DISAGREES confirm" in out and "agrees    allow" in out
    assert result.stderr == ""


def test_progress_bar_draws_on_a_terminal_only():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = _Bar(stream)
        bar(0, 4000)
        bar(4000, 4000)
        bar.close()
    assert "4,000/4,000 verdicts" in tty.getvalue() and "[####" in tty.getvalue()
    assert pipe.getvalue() == ""


def test_diff_counts_unreadable_stored_signals_instead_of_failing(history: Path):
    async def spoil() -> None:
        async with await Store.open(history) as store:
            await store.db.execute(
                "UPDATE verdicts SET signals = '{\"backend\": 3' WHERE sha256 = ?",
                (CASES[0].sha256,),
            )

    asyncio.run(spoil())
    report = _diff(history, str(BUNDLED))
    assert report["skipped"]["stored signals that cannot be read (written by another version?)"]
    assert report["changed"] == FLIPS - 1 and report["judged"] == len(CASES) - 1


def test_diff_refuses_a_malformed_candidate_naming_the_key(history: Path, tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text(BUNDLED.read_text().replace("trust_nsfw_flag = true", "trust_nsfw_flag = 1"))
    result = CliRunner().invoke(main, ["--db", str(history), "policy", "diff", str(bad)])
    assert result.exit_code == 2 and "`trust_nsfw_flag` must be true or false" in result.output
    since = CliRunner().invoke(
        main, ["--db", str(history), "policy", "diff", str(BUNDLED), "--since", "lately"]
    )
    assert since.exit_code == 2 and "--since" in since.output
    nostore = CliRunner().invoke(
        main, ["--db", str(tmp_path / "none.db"), "policy", "diff", str(BUNDLED)]
    )
    assert nostore.exit_code == 1 and "no store" in nostore.output
