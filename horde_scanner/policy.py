"""Signals -> Verdict. The rules are data (a versioned TOML policy file); this module only
applies them, so admins tune detection without touching code."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from horde_scanner.verdict import Label, Signals, Verdict


class PolicyError(Exception):
    """The policy file is missing, unparsable or incomplete; the message says which."""


def _phrase_pattern(phrases: list[str]) -> re.Pattern[str] | None:
    if not phrases:
        return None
    alternatives = sorted((re.escape(p.lower()).replace(r"\ ", r"\s+") for p in phrases), key=len)
    return re.compile(r"\b(" + "|".join(reversed(alternatives)) + r")s?\b", re.IGNORECASE)


@dataclass(frozen=True)
class HordeRules:
    underage_words: re.Pattern[str] | None
    sexual_words: re.Pattern[str] | None
    underage_tags: frozenset[str]
    sexual_tags: frozenset[str]
    tag_min_confidence: float
    trust_nsfw_flag: bool

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> HordeRules:
        return cls(
            underage_words=_phrase_pattern(list(table.get("underage_words", []))),
            sexual_words=_phrase_pattern(list(table.get("sexual_words", []))),
            underage_tags=frozenset(t.lower() for t in table.get("underage_tags", [])),
            sexual_tags=frozenset(t.lower() for t in table.get("sexual_tags", [])),
            tag_min_confidence=float(table.get("tag_min_confidence", 0.0)),
            trust_nsfw_flag=bool(table.get("trust_nsfw_flag", True)),
        )


class Policy:
    def __init__(self, version: str, horde: HordeRules, raw: dict[str, Any]) -> None:
        self.version = version
        self.horde = horde
        self.raw = raw

    @classmethod
    def load(cls, path: Path | None = None) -> Policy:
        """The admin's policy file when given, else the bundled default."""
        try:
            if path is None:
                text = resources.files("horde_scanner.data").joinpath("policy.toml").read_text()
                where = "bundled policy.toml"
            else:
                text = Path(path).read_text()
                where = str(path)
            raw = tomllib.loads(text)
        except OSError as exc:
            raise PolicyError(f"policy file {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"policy file {where}: {exc}") from None
        version = raw.get("version")
        if not isinstance(version, str) or not version:
            raise PolicyError(f"policy file {where}: a non-empty string `version` is required")
        horde = raw.get("horde", {})
        if not isinstance(horde, dict):
            raise PolicyError(f"policy file {where}: [horde] must be a table")
        return cls(version, HordeRules.from_table(horde), raw)

    def judge(self, signals: Signals) -> Verdict:
        sexual: list[str] = []
        underage: list[str] = []
        rules = self.horde
        if signals.nsfw and rules.trust_nsfw_flag:
            sexual.append(f"{signals.backend}: nsfw form is true")
        if signals.caption:
            sexual += _word_hits(rules.sexual_words, signals.caption, "caption", signals.backend)
            underage += _word_hits(
                rules.underage_words, signals.caption, "caption", signals.backend
            )
        for tag, confidence in signals.tags.items():
            if confidence < rules.tag_min_confidence:
                continue
            if tag in rules.sexual_tags:
                sexual.append(f"{signals.backend}: tag {tag!r} ({confidence:.1f})")
            if tag in rules.underage_tags:
                underage.append(f"{signals.backend}: tag {tag!r} ({confidence:.1f})")
        if sexual and underage:
            label, reasons = Label.CSAM, sexual + underage
        elif sexual:
            label, reasons = Label.NSFW, sexual
        else:
            label, reasons = Label.CLEAN, []
        return Verdict(
            label=label,
            reasons=reasons,
            policy_version=self.version,
            backend=signals.backend,
            signals=signals,
        )


def _word_hits(pattern: re.Pattern[str] | None, text: str, field: str, backend: str) -> list[str]:
    if pattern is None:
        return []
    words = sorted({m.group(0).lower() for m in pattern.finditer(text)})
    return [f"{backend}: {field} word {w!r}" for w in words]
