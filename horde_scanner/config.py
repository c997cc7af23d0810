"""The one configuration tree.

Sources, highest priority first: keyword arguments, environment variables
(`HORDE_SCANNER_` prefix, nested with `__`, e.g. `HORDE_SCANNER_HORDE__API_KEY`), a `.env` file in
the working directory, a TOML file given with `--config`, then the defaults below. Every option has
a `Field(description=...)`: docs/reference/configuration.md is generated from them
(config_reference.py; a test fails when one is missing or the page is stale). Keys of other
programs in `.env` (Lemmy's) are skipped; misspelt keys of ours are refused by name
(config_keys.py).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from horde_scanner import backend_registry
from horde_scanner.config_keys import OpenSection, check_env, check_toml, fields_of, is_ours
from horde_scanner.errors import InvalidInput
from horde_scanner.media.types import DecodeLimits
from horde_scanner.verdict import Label

ANONYMOUS_HORDE_KEY = "0000000000"


class ConfigError(InvalidInput):
    """A configuration value is invalid; the message names the key."""


class OnEvent(StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"


class Section(BaseModel):
    # A misspelt key is an error, not a silently ignored default.
    model_config = ConfigDict(extra="forbid")


# RFC 1918 ranges (and IPv6 unique-local): pictrs-safety's IPADDR accepts these.
PRIVATE_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")


class ServerSettings(Section):
    """The HTTP service pict-rs calls: where it listens, who may call it, and the bounds on every
    upload's body."""

    host: str = Field(
        "127.0.0.1", description="Bind address (`0.0.0.0` in containers; the image sets it)."
    )
    port: int = Field(14051, ge=1, le=65535, description="Port (14051, as pictrs-safety).")
    # Ids pict-rs may put in the URL path (/api/v1/scan/<id>). Treat them as secrets.
    client_ids: list[str] = Field(
        default_factory=list,
        description=(
            "Unnamed client ids (secrets), recorded as `upload:id-` plus the first 8 hex of the "
            "id's sha256; rows an older release wrote with the id itself are rewritten this way at"
            " start-up."
        ),
    )
    # Named ids, {name = secret}: the name is what the audit log, verdicts and exports record.
    clients: dict[str, str] = Field(
        default_factory=dict,
        description=(
            'Named client ids, `{name = "id"}`: the ids accepted in `/api/v1/scan/<id>` (secrets);'
            " uploads are recorded as `upload:<name>`, never with the id."
        ),
    )
    # Networks accepted for the special id IPADDR (loopback always is). The default is what
    # pictrs-safety accepts: the private ranges, where pict-rs sits on a docker network.
    allowed_ips: list[str] = Field(
        default_factory=lambda: list(PRIVATE_NETWORKS),
        description=(
            "Networks accepted for the id `IPADDR` (loopback always is); replace the list to "
            "narrow or widen it."
        ),
    )
    # Only requests from these addresses may set X-Forwarded-For.
    trusted_proxies: list[str] = Field(
        default_factory=list, description="Peers whose `X-Forwarded-For` is believed."
    )
    max_body_bytes: int = Field(
        40 * 1024 * 1024, gt=0, description="Largest upload read (40 MiB); a larger one gets 413."
    )
    # Complete uploads admitted (hashed, looked up, persisted) at once; the rest wait for a
    # slot, up to the deadline. Bodies are read before, without a slot (see below).
    max_concurrent_uploads: int = Field(
        128,
        gt=0,
        description=(
            "Complete uploads admitted (hashed, looked up, persisted) at once; the rest wait for a"
            " slot, up to the deadline."
        ),
    )
    # Processes sharing the port (SO_REUSEPORT) and the store, for hosts with several cores.
    processes: int = Field(
        1, ge=1, le=64, description="Processes sharing the port (SO_REUSEPORT) and the store."
    )
    # On SIGTERM: how long /readyz answers 503 before the listener closes (let a balancer's
    # health check see it), then how long uploads in flight may take to be answered.
    drain_s: float = Field(
        3.0,
        ge=0,
        le=300,
        description="After SIGTERM, seconds `/readyz` answers 503 before the port closes.",
    )
    shutdown_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="After the drain, the longest an upload in flight may take to be answered.",
    )
    # Reading a body: after the grace, a sender must keep up this average rate or be cut off
    # (408); the whole body must be in by the validation deadline either way.
    upload_min_bytes_per_s: int = Field(
        32 * 1024,
        gt=0,
        description=(
            "After the grace, a body arriving slower than this on average is cut off (408)."
        ),
    )
    upload_rate_grace_s: float = Field(
        2.0,
        ge=0,
        description=(
            "Seconds a sender has before the rate counts (the whole body is due by the deadline "
            "anyway)."
        ),
    )
    # After an upload is refused before its body was read (408 too slow, 413 too large), how
    # long what the sender still sends is read and dropped before the socket closes.
    linger_s: float = Field(
        2.0,
        ge=0,
        le=60,
        description=(
            "After a 408 or 413, seconds what the sender still sends is read and dropped before "
            "the socket closes."
        ),
    )
    # Bodies being read are held in memory up to this many bytes in all; past it, in
    # temporary files (in upload_spool_dir; None: the system's temporary directory) up to
    # upload_spool_bytes, and beyond both an upload is refused (503, recorded).
    upload_memory_bytes: int = Field(
        64 * 1024 * 1024,
        gt=0,
        description=(
            "Bytes of bodies being read held in memory, all uploads together (64 MiB); past it, "
            "bodies go to temporary files."
        ),
    )
    upload_spool_bytes: int = Field(
        2 * 1024 * 1024 * 1024,
        ge=0,
        description=(
            "Bytes of bodies in temporary files (2 GiB); past both budgets an upload gets 503, "
            "recorded."
        ),
    )
    upload_spool_dir: Path | None = Field(
        None,
        description="Directory for those temporary files; unset: the system's temporary directory.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description=(
            "A request's line and headers must arrive within this, seconds, from the connection "
            "(or from the first byte of a next request on a kept-alive one); else 408 and the "
            "connection closes."
        ),
    )
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description=(
            "Bodies of every route but the scan route must arrive whole within this, seconds; "
            "else 408."
        ),
    )
    form_max_bytes: int = Field(
        64 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description=(
            "Largest body of a form or JSON route (admin login, page actions, admin API), "
            "chunked or not (64 KiB); larger is 413, before it is parsed."
        ),
    )
    worker_answer_max_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest body of a worker's answer (POST /api/v1/pop), chunked or not (1 MiB).",
    )
    auth_max_failures: int = Field(
        10,
        ge=1,
        description=(
            "Wrong client ids, worker keys, publish or metrics tokens one client may send within "
            "auth_failure_window_s before it waits (429); each kind counted apart."
        ),
    )
    auth_failure_window_s: float = Field(
        300.0, gt=0, description="The window auth_max_failures counts failures in, seconds."
    )

    @field_validator("clients")
    @classmethod
    def _client_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, secret in value.items():
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
                raise ValueError(f"client name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
            if not secret or secret == "IPADDR":
                raise ValueError(f"client {name!r}: the id must be a non-empty secret")
        return value

    @field_validator("allowed_ips", "trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value


class ValidationSettings(Section):
    """How an upload is answered: the deadline, what happens when no verdict comes in time, which
    labels are rejected."""

    # pict-rs gives thumbnails 10 s in total; answer well before that.
    deadline_s: float = Field(
        8.0,
        gt=0,
        le=120,
        description="Answer pict-rs within this many seconds (under Lemmy's 10 s for thumbnails).",
    )
    on_timeout: OnEvent = Field(
        OnEvent.ACCEPT,
        description=(
            "Answer when no verdict came by the deadline (or the backend failed for good): "
            "`accept` (fail open) or `reject` (fail closed)."
        ),
    )
    on_unreadable: OnEvent = Field(
        OnEvent.ACCEPT,
        description=(
            "Answer for bytes that cannot be decoded: `accept` (recorded as `unreadable`) or "
            "`reject`."
        ),
    )
    reject_labels: list[Label] = Field(
        default_factory=lambda: [Label.CSAM],
        description="Labels answered with 406 (pict-rs then deletes the file).",
    )
    # Misses being decoded at once (each holds its upload's bytes until downscaled).
    max_decoding: int = Field(
        4,
        gt=0,
        description=(
            "Decode threads: misses decoded at once (each holds its upload's bytes until "
            "downscaled)."
        ),
    )
    verdict_cache_size: int = Field(
        100_000, ge=0, description="Answers kept in memory (the store keeps all)."
    )
    # A background judgement that keeps failing becomes an `error` verdict after this many
    # tries. Tries while a path is down wait 5 minutes each (and are woken the moment it is
    # back): about four hours of outage in all.
    job_max_attempts: int = Field(
        50,
        gt=0,
        description=(
            "Tries before a background judgement becomes an `error` verdict (while a path is "
            "down a try waits 5 min and is woken when it returns: about four hours of outage)."
        ),
    )
    job_max_backoff_s: float = Field(
        60.0,
        ge=1.0,
        le=3600.0,
        description=(
            "Longest wait before a failed background judgement is tried again (the wait doubles "
            "from 1 s up to this); a backend that names a later time (maintenance, kudos "
            "budget, path down) is believed."
        ),
    )


class MediaSettings(Section):
    """Decoding limits (every file, wherever it is decoded) and the image sent to backends."""

    max_pixels: int = Field(
        64_000_000,
        gt=0,
        description="Larger images are refused from their header (decompression bombs).",
    )
    # Longest side sent to a backend: 512 px is one AI Horde tile.
    backend_max_side: int = Field(
        512,
        ge=64,
        le=3072,
        description="Longest side sent to a backend, px (512: one AI Horde tile).",
    )
    webp_quality: int = Field(85, ge=1, le=100, description="Quality of the WebP sent to backends.")
    # Animations and video: frames judged per file (the first, then spread over the duration).
    max_frames: int = Field(
        8,
        ge=1,
        le=64,
        description=(
            "Frames judged per animation or video (the first, then spread over the duration)."
        ),
    )
    # An animation with more frames is unreadable (every frame of a GIF must be decoded).
    max_frame_count: int = Field(
        5_000, ge=1, description="An animation with more frames is unreadable."
    )
    # Pixels decoded over all frames of one file.
    max_total_pixels: int = Field(
        1_000_000_000,
        gt=0,
        description="Pixels decoded over all frames of one file; more makes it unreadable.",
    )
    # Decoding one file longer than this makes it unreadable.
    max_decode_s: float = Field(
        5.0, gt=0, description="Decoding one file longer than this makes it unreadable."
    )
    # Frames this close (difference hash bits of 64, and mean colour) count as one.
    near_duplicate_bits: int = Field(
        4,
        ge=0,
        le=32,
        description=(
            "Frames within this difference-hash distance (of 64 bits, with a similar mean colour) "
            "count as one."
        ),
    )
    decode_memory_bytes: int = Field(
        320 << 20,
        ge=64 << 20,
        description=(
            "Bytes all decodes of this process may hold at once (320 MiB), each estimated from "
            "its file's header; a decode that does not fit waits, one that never could is "
            "unreadable."
        ),
    )

    def limits(self, **override: Any) -> DecodeLimits:
        """The decoder's limits: every field of this section (DecodeLimits has the same names),
        with `override` for a caller that needs a different size (the review page's preview)."""
        names = {f.name for f in dataclasses.fields(DecodeLimits)}
        return DecodeLimits(**{**{n: getattr(self, n) for n in names}, **override})


class HordeSettings(Section):
    """The AI Horde client: key, rate limits, polling, failures and a kudos budget."""

    url: str = Field("https://aihorde.net/api", description="AI Horde base URL.")
    api_key: str = Field(
        ANONYMOUS_HORDE_KEY,
        description=(
            "Your AI Horde API key; the anonymous key by default (lowest priority; a warning is "
            "logged)."
        ),
    )
    contact_url: str = Field(
        "https://github.com/horde-scanner/horde-scanner",
        description="Third part of the `Client-Agent` header sent to the AI Horde.",
    )
    # The `interrogation` form adds booru-style tags (lolicon, ...) at 3 kudos instead of 1.
    interrogation: bool = Field(
        False,
        description=(
            "Also ask for booru-style tags (the `interrogation` form: 3 kudos more per image)."
        ),
    )
    slow_workers: bool = Field(
        True, description="Allow slow workers (more capacity; burn 2 kudos instead of 1)."
    )
    max_in_flight: int = Field(
        90,
        gt=0,
        le=150,
        description=(
            "AI Horde requests at once, and background judgements at once (at most 40 when no AI "
            "Horde path is configured)."
        ),
    )
    # Status polls of one request: the first this soon after the submit, then at this pace
    # while its forms wait for a worker, and faster while a worker is processing them.
    first_poll_s: float = Field(
        0.15, ge=0.05, description="First status poll this soon after a submit."
    )
    poll_interval_s: float = Field(
        1.0,
        ge=0.1,
        description="Status poll interval per request while its forms wait for a worker.",
    )
    processing_poll_s: float = Field(
        0.25, ge=0.11, description="Status poll interval per request while a worker processes it."
    )
    # Our share of the Horde's status limit, 10/s for each ip + method + path (per request id).
    status_polls_per_s: int = Field(
        5,
        ge=1,
        le=10,
        description=(
            "Our share (1-10) of the 10/s status limit the Horde keeps for each request id (GET "
            "and DELETE apart)."
        ),
    )
    # Our share of the Horde's 90 submits per minute per IP, in any 60 s (a burst goes at once).
    submits_per_min: int = Field(
        80,
        ge=1,
        le=90,
        description=(
            "Our share (1-90) of the Horde's 90 submits per minute per IP: never more in any "
            "`submit_window_s`; a burst goes at once. Kept in the store, so a restart does not "
            "empty it."
        ),
    )
    submit_window_s: float = Field(
        60.0,
        ge=1.0,
        le=3600.0,
        description=(
            "The window of the AI Horde's submit limit, in seconds: `submits_per_min` counts "
            "submits in any window this long (60 on aihorde.net; other Hordes may differ)."
        ),
    )
    # Read /v2/status/performance (queue length, workers) this often; 0 turns it off.
    performance_interval_s: float = Field(
        60.0,
        ge=0,
        description=(
            "Read `/v2/status/performance` (the Horde's queue and workers) this often; 0: never."
        ),
    )
    # Kudos spent per UTC day at most; None: no budget. When spent, misses follow on_timeout
    # and are judged when the budget renews.
    max_kudos_per_day: float | None = Field(
        None,
        gt=0,
        description=(
            "Kudos spent per UTC day at most; unset: no budget. When spent, misses follow "
            "`on_timeout` and are judged when it renews."
        ),
    )
    # Give up on one request (and DELETE it) after this long.
    request_timeout_s: float = Field(
        600.0,
        gt=0,
        description=(
            "Give up on (and DELETE) one AI Horde request after this long of the Horde's time "
            "(from its answer to the submit; waiting for our own submit window does not count)."
        ),
    )
    http_timeout_s: float = Field(
        20.0, gt=0, description="Time limit of one HTTP call to the AI Horde."
    )
    retries: int = Field(
        4,
        ge=0,
        le=10,
        description=(
            "Retries of connection errors, timeouts and 5xx (exponential backoff with jitter)."
        ),
    )
    maintenance_pause_s: float = Field(
        120.0,
        ge=0,
        description="Stop sending this long after `MaintenanceMode` or `UntrustedUnsafeIP`.",
    )
    # Failed calls in a row (refused, DNS, timeout, 5xx) that mark the AI Horde down, and how
    # often one heartbeat probes it while down.
    down_after_failures: int = Field(
        3,
        ge=1,
        le=100,
        description=(
            "Failed calls in a row (refused, DNS, timeout, 5xx) that mark a healthy AI Horde "
            "down; after recent failures at random, more (up to 4 times this)."
        ),
    )
    probe_interval_s: float = Field(
        1.0,
        gt=0,
        le=300,
        description=(
            "While the AI Horde is down, one heartbeat this often; the first success marks it up."
        ),
    )
    # Animations and video: pack up to 4 frames into one 512 px 2x2 image (one request, a
    # quarter of the kudos) at the price of each frame being judged at 256 px.
    pack_frames: bool = Field(
        False,
        description=(
            "Pack up to 4 frames of an animation or video into one 512 px 2x2 image: a quarter of "
            "the requests and kudos, but each frame judged at 256 px among others."
        ),
    )


class StoreSettings(Section):
    """The store: a SQLite file (default) or PostgreSQL, for replicas sharing one database."""

    path: Path = Field(
        Path("horde-scanner.db"),
        description="The SQLite file (WAL), used when `store.url` is unset.",
    )
    # sqlite:///path (the default: `path` above) or postgresql://user:pass@host:port/db.
    url: str | None = Field(
        None,
        description=(
            "`sqlite:///relative.db`, `sqlite:////absolute.db` or "
            "`postgresql://user:password@host:port/db`; unset: SQLite at `store.path`."
        ),
    )
    # PostgreSQL: how long a claimed job stays with the replica that took it without word
    # from it (renewed every third of this while judged); a dead replica's jobs wait this long.
    job_lease_s: float = Field(
        30.0,
        ge=1.0,
        le=3600.0,
        description=(
            "PostgreSQL: how long a claimed job stays with the replica that took it without word "
            "from it (renewed every third of this); a dead replica's jobs are taken over after "
            "this."
        ),
    )
    # PostgreSQL: connections per process.
    pool_size: int = Field(10, ge=2, le=200, description="PostgreSQL: connections per process.")
    outage_upload_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="While the store is away: bytes of uploads held in memory to be looked up "
        "and judged when it is back (past this, answered by on_timeout and not judged).",
    )
    outage_verdicts: int = Field(
        10_000,
        ge=0,
        description="While the store is away: verdicts kept in memory to be written when it is "
        "back (past this, judging waits for the store).",
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value == "":
            return None  # unset, e.g. an empty compose variable: SQLite at `path`
        if value is not None and not value.startswith(
            ("sqlite:///", "postgresql://", "postgres://")
        ):
            raise ValueError("want sqlite:///path or postgresql://user:password@host:port/db")
        return value

    @property
    def target(self) -> str:
        return self.url or f"sqlite:///{self.path}"


class PictrsSettings(Section):
    """pict-rs's internal API: purging late positives and deleting through pict-rs in sweeps."""

    url: str | None = Field(
        None,
        description=(
            "pict-rs base URL for its internal API (late positives purged at once, sweep deletes "
            "through pict-rs); unset: no API."
        ),
    )
    api_key: str | None = Field(
        None, description="pict-rs `server.api_key`, sent as `X-Api-Token`."
    )
    # Pages of /internal/hashes (newest first) searched for a late positive's hash.
    search_pages: int = Field(
        20,
        gt=0,
        description=(
            "Pages of `/internal/hashes` (newest first) searched for a late positive's hash."
        ),
    )


class PolicySettings(Section):
    """The policy file: thresholds and word lists that turn signals into a verdict."""

    # A TOML policy file replacing the bundled one (horde_scanner/data/policy.toml).
    path: Path | None = Field(
        None,
        description="Your policy TOML file; unset: the bundled `horde_scanner/data/policy.toml`.",
    )


class BackendSettings(Section, OpenSection):
    """Which path judges a miss, how `hybrid` chooses between them, and the options of a
    registered backend kind (`[backend.<kind>]`, backend_registry.py)."""

    # The registered kinds' sections are the extra keys (checked in `_kind_sections`).
    model_config = ConfigDict(extra="allow")

    # auto: local when a CUDA GPU (with the [gpu] extra) or a worker pool is configured, else
    # the AI Horde. hybrid: the fastest live path, falling back between local and the Horde.
    # The names come from the backend registry, so a backend that registers adds its own.
    kind: str = Field(
        "auto",
        description=(
            "Which backend judges a miss: `auto`, `horde`, `local`, `hybrid`, or a kind a "
            "backend module registered."
        ),
    )
    # hybrid: a path whose typical latency exceeds this is only used when nothing faster is
    # live (default: validation.deadline_s).
    hybrid_budget_s: float | None = Field(
        None,
        gt=0,
        description=(
            "`hybrid`: paths expected slower than this are tried last; unset: "
            "`validation.deadline_s`."
        ),
    )

    @classmethod
    def open_sections(cls) -> dict[str, type[BaseModel]]:
        return backend_registry.sections()

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        known = backend_registry.backend_kinds()
        if value not in known:
            raise ValueError(f"unknown backend kind {value!r}; known: {', '.join(known)}")
        return value

    @model_validator(mode="after")
    def _kind_sections(self) -> BackendSettings:
        extra = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        known = backend_registry.sections()
        for key, value in extra.items():
            model = known.get(key)
            if model is None:
                raise ValueError(f"[backend] has no option or backend section {key!r}")
            if not isinstance(value, model):
                extra[key] = model.model_validate(value)
        return self

    def section(self, kind: str) -> BaseModel | None:
        """The options of registered backend `kind` ([backend.<kind>], else its defaults);
        None when the kind has no section."""
        model = backend_registry.sections().get(kind)
        if model is None:
            return None
        given = (self.__pydantic_extra__ or {}).get(kind)
        return given if isinstance(given, model) else model()


class LocalSettings(Section):
    """The in-process CLIP scorer (extra [gpu]); used by backend local/hybrid/auto and by
    `horde-scanner worker`."""

    # Load CLIP in the service process. None (auto): when torch sees a CUDA GPU, or when
    # backend.kind is `local` and no worker pool is configured (CPU fallback: slow, seconds per
    # image for ViT-L/14). false: judge locally only through remote workers.
    in_process: bool | None = Field(
        None,
        description=(
            "Load CLIP in this process; unset (auto): with a CUDA GPU, or for `backend.kind = "
            '"local"` without workers (CPU, slow); `false`: workers only.'
        ),
    )
    # Hub name (looked up in the Hugging Face cache, downloaded unless `offline`) ...
    model: str = Field(
        "openai/clip-vit-large-patch14",
        description="Hugging Face model name, from the cache (downloaded unless `local.offline`).",
    )
    # ... or a directory holding a saved CLIP model and its tokenizer (wins over `model`).
    model_dir: Path | None = Field(
        None,
        description=(
            "Directory with a saved CLIP model and tokenizer (`save_pretrained`); wins over "
            "`local.model`."
        ),
    )
    cache_dir: Path | None = Field(
        None, description="Hugging Face cache directory; unset: its default."
    )
    offline: bool = Field(False, description="Never download a model.")
    # auto: CUDA when torch sees a GPU, else CPU. "cpu" forces CPU; "cuda" fails without one.
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="`auto` (CUDA when torch sees a GPU, else CPU), `cpu`, `cuda` or `cuda:N`.",
    )
    fp16: bool = Field(True, description="Half precision on CUDA.")
    batch_size: int = Field(
        16, ge=1, le=256, description="Largest batch (also the worker's default concurrency)."
    )
    # How long the first request of a batch waits for company before the batch runs.
    batch_wait_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        description="How long the first image of a batch waits for company before the batch runs.",
    )
    # Requests waiting for the model beyond this count are refused (back-pressure).
    max_queue: int = Field(
        256,
        ge=1,
        description="Images waiting for the model beyond this are refused (back-pressure).",
    )


class PrescreenSettings(Section):
    """CPU nudity pre-screen (extra [prescreen]): NudeNet's bundled ONNX detector."""

    enabled: bool = Field(
        False, description="Run the CPU pre-screen (NudeNet) first on every miss."
    )
    # An ONNX model with NudeNet's 18 classes; default: the one shipped in the nudenet wheel.
    model_path: Path | None = Field(
        None,
        description=(
            "Another NudeNet ONNX model (18 classes); unset: the `320n.onnx` in the nudenet wheel."
        ),
    )
    resolution: int = Field(320, ge=64, le=1280, description="Model input size, px.")
    # Threads running the detector (each uses one core); more waiting images are refused.
    threads: int = Field(2, ge=1, le=64, description="Detector threads (one core each).")
    max_queue: int = Field(
        64, ge=1, description="Beyond this many waiting, images skip the pre-screen."
    )
    # Send images the pre-screen judged clean to the next backend too, in the background; a
    # positive second opinion becomes a late positive.
    second_opinion: bool = Field(
        False,
        description=(
            "Also send images the pre-screen cleared to the next backend, in the background; a "
            "worse answer becomes a late positive."
        ),
    )
    second_opinion_max_pending: int = Field(
        100, ge=1, description="Second opinions in flight at most."
    )


_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class WorkerPoolSettings(Section):
    """Remote GPU workers pulling jobs over HTTP (pictrs-safety protocol); off without keys."""

    # API keys workers send in the `apikey` header, by name: {name = "secret"}. A plain list
    # (the old form) names its keys key1, key2, ... Remove a name to revoke that key.
    keys: dict[str, str] = Field(
        default_factory=dict,
        description=(
            'Worker API keys by name (`{name = "secret"}`; a plain list names them `key1`...); '
            "empty: no worker endpoints."
        ),
    )
    # A job taken by a worker that has not answered after this long goes to another worker.
    job_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Reassign a taken job to another worker after this long without an answer.",
    )
    # A worker that has not polled for this long counts as gone.
    missing_after_s: float = Field(10.0, gt=0, description="A worker silent this long is gone.")
    # Jobs waiting for a worker beyond this count make the pool "saturated".
    max_queue: int = Field(
        32, ge=1, description="Queued jobs beyond this mean the pool is saturated."
    )
    # Longest long-poll a worker may ask for (`GET /api/v1/pop?wait=S`).
    max_poll_wait_s: float = Field(
        20.0, ge=0, le=60, description="Longest `GET /api/v1/pop?wait=S` long poll."
    )

    @field_validator("keys", mode="before")
    @classmethod
    def _named_keys(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return {f"key{i}": key for i, key in enumerate(value, start=1) if key}
        return value

    @field_validator("keys")
    @classmethod
    def _check_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for name, secret in value.items():
            if not _KEY_NAME.fullmatch(name):
                raise ValueError(f"worker key name {name!r}: use letters, digits, . _ - (<= 64)")
            if not secret:
                raise ValueError(f"worker key {name!r} is empty")
        secrets = list(value.values())
        if len(secrets) != len(set(secrets)):
            raise ValueError("two worker keys have the same secret; give each its own")
        return value


class S3Settings(Section):
    """S3-compatible storage for `s3://` sources; unset values fall back to the usual AWS
    variables and files."""

    # None: the usual AWS variables and files (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID...).
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint; unset: `AWS_ENDPOINT_URL`, else AWS."
    )
    region: str | None = Field(
        None, description="Region used for signing; unset: `AWS_REGION`, else `us-east-1`."
    )
    access_key_id: str | None = Field(
        None, description="Access key; unset: `AWS_ACCESS_KEY_ID` or the AWS profiles."
    )
    secret_access_key: str | None = Field(
        None, description="Secret key; unset: `AWS_SECRET_ACCESS_KEY` or the AWS profiles."
    )
    # Quarantined objects go to this bucket (None: the scanned bucket) under this prefix.
    quarantine_bucket: str | None = Field(
        None, description="Bucket for quarantined objects; unset: the scanned bucket."
    )
    quarantine_prefix: str = Field(
        "horde-scanner-quarantine/",
        description="Key prefix for quarantined objects (never scanned).",
    )
    # "path" for servers without per-bucket host names (MinIO, Garage behind one name).
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="`path` for MinIO/Garage-style endpoints without per-bucket host names."
    )
    timeout_s: float = Field(30.0, gt=0, description="Connect and read timeout per S3 request.")


class SSHSettings(Section):
    """Remote hosts over SSH (SFTP) for `ssh://` sources."""

    # None: the SSH agent and the default keys in ~/.ssh.
    key_path: Path | None = Field(
        None, description="Private key file; unset: the SSH agent and the keys in `~/.ssh`."
    )
    passphrase: str | None = Field(None, description="Passphrase of that key.")
    # None: ~/.ssh/known_hosts. Host keys are always checked unless check_host_key is false.
    known_hosts: Path | None = Field(
        None, description="known_hosts file; unset: `~/.ssh/known_hosts`."
    )
    check_host_key: bool = Field(True, description="`false` skips host key checking (logged).")
    # On the remote host; a relative path is under the login directory.
    quarantine_path: str = Field(
        ".horde-scanner-quarantine",
        description=(
            "Remote quarantine directory (0700), relative to the login directory unless absolute."
        ),
    )
    connect_timeout_s: float = Field(15.0, gt=0, description="Connection and login timeout.")


class ScanSettings(Section):
    """Storage sweeps (`horde-scanner scan`, `apply`): concurrency, what is acted on, the
    quarantine."""

    # Files read and judged at once (each holds its bytes until judged). The AI Horde takes
    # seconds per image: a sweep it judges needs many in flight (its own cap: max_in_flight).
    concurrency: int = Field(
        32,
        gt=0,
        le=256,
        description=(
            "Files read and judged at once by a sweep (the AI Horde needs many in flight; decoding"
            " is bounded by `validation.max_decoding`)."
        ),
    )
    # Verdicts a quarantine/delete sweep acts on.
    act_labels: list[Label] = Field(
        default_factory=lambda: [Label.CSAM],
        description="Verdicts that `--action quarantine|delete` act on.",
    )
    # accept: leave unreadable files alone (reported); reject: act on them like positives.
    on_unreadable: OnEvent = Field(
        OnEvent.ACCEPT,
        description=(
            "`accept`: leave unreadable files in place (reported); `reject`: act on them like "
            "positives."
        ),
    )
    # Local quarantine directory (0700). None: "quarantine" next to the store file.
    quarantine_path: Path | None = Field(
        None,
        description=(
            "Local quarantine directory (0700); unset: `quarantine/` next to the store file."
        ),
    )
    # Bigger files are recorded as unreadable without being read.
    max_file_bytes: int = Field(
        100 * 1024 * 1024,
        gt=0,
        description="Bigger files are recorded as unreadable without being read.",
    )
    follow_interval_s: float = Field(60.0, gt=0, description="Seconds between `--follow` cycles.")
    s3: S3Settings = Field(
        default_factory=S3Settings, description="S3-compatible storage, for `s3://` sources."
    )
    ssh: SSHSettings = Field(
        default_factory=SSHSettings,
        description="Remote hosts over SSH (SFTP), for `ssh://` sources.",
    )


class HashTrust(StrEnum):
    # A match rejects at once (the verdict is the entry's label).
    DENY = "deny"
    # A match is accepted and judged as usual, and flagged for an admin (`hashes flagged`).
    REVIEW = "review"


# Origins the store uses for entries that are not from a subscription.
RESERVED_ORIGINS = frozenset({"local", "verdict"})


class HashSubscription(Section):
    """One subscribed hash list (a `[[hashes.subscriptions]]` table)."""

    # Short name: written as the origin of its entries, in logs and in `hashes flagged`.
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description=(
            "Short name (letters, digits, `.`, `_`, `-`; not `local` or `verdict`): the origin of "
            "its entries in logs and `hashes flagged`."
        ),
    )
    url: str = Field(
        pattern=r"^https?://", description="The other instance's `/api/v1/hashes` (http or https)."
    )
    trust: HashTrust = Field(
        HashTrust.DENY,
        description=(
            "`deny`: a match rejects at once; `review`: a match is accepted, judged as usual and "
            "flagged for an admin."
        ),
    )
    refresh_s: float = Field(3600.0, ge=0.1, description="Seconds between refreshes.")
    # Sent as `Authorization: Bearer <token>` when the publisher requires one (to the url's
    # own origin only).
    token: str | None = Field(
        None, description="Sent as `Authorization: Bearer`, to the url's own origin only."
    )
    timeout_s: float = Field(60.0, gt=0, description="One fetch's time limit.")
    # Redirects are followed within the url's origin only; other origins (scheme://host:port)
    # a redirect may lead to must be listed here.
    redirect_origins: list[Annotated[str, Field(pattern=r"^https?://[^/?#]+/?$")]] = Field(
        default_factory=list,
        description=(
            "Other origins (`https://host[:port]`) a redirect may lead to; redirects elsewhere are"
            " refused."
        ),
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_ORIGINS:
            raise ValueError(f"{value!r} is reserved; choose another subscription name")
        return value


class HashesSettings(Section):
    """Perceptual hashes (PDQ) and hash lists: matching, publishing, subscriptions."""

    # PDQ hashes within this Hamming distance (of 256 bits) match; 31 is Meta's recommendation.
    pdq_max_distance: int = Field(
        31,
        ge=0,
        le=128,
        description=(
            "PDQ Hamming distance (0-128 of 256 bits) that counts as a match (31: Meta's "
            "recommendation)."
        ),
    )
    # PDQ quality (0-100) below which a hash never matches, on either side.
    pdq_min_quality: int = Field(
        50, ge=0, le=100, description="PDQ quality (0-100) below which a hash never matches."
    )
    # How often the in-memory index checks the store for changes made by other processes.
    sync_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often the in-memory index looks for changes made by other processes.",
    )
    # Serve this instance's list at GET /api/v1/hashes.
    publish: bool = Field(False, description="Serve this instance's list at `GET /api/v1/hashes`.")
    # Without a token, publishing must be made public explicitly.
    publish_public: bool = Field(
        False, description="Serve it without a token (needed when `publish` has no token)."
    )
    publish_token: str | None = Field(None, description="Bearer token subscribers must send.")
    # `source` column of this instance's own entries in the published list and exports.
    publish_source: str = Field(
        "horde-scanner",
        description="`source` of this instance's own entries in the published list and exports.",
    )
    # Also publish machine positives no admin has confirmed (docs/trust.md: a false positive of a
    # weak classifier then blocks every near copy on every subscriber, unreviewed).
    publish_unreviewed: bool = Field(
        False,
        description=(
            "Also publish machine positives no admin confirmed (risky: see Trust boundaries)."
        ),
    )
    subscriptions: list[HashSubscription] = Field(
        default_factory=list,
        description=(
            "Lists of other instances to subscribe to, `[[hashes.subscriptions]]` tables (keys "
            "below)."
        ),
    )
    # A subscribed list larger than this (bytes after decompression, or rows) is refused (its
    # last good copy is kept).
    max_list_bytes: int = Field(
        256 * 1024 * 1024,
        gt=0,
        description=(
            "Largest subscribed list accepted (256 MiB, after decompression); a larger one is "
            "refused and its last good copy kept."
        ),
    )
    max_list_rows: int = Field(
        1_000_000,
        gt=0,
        description=(
            "Most rows (good and bad) a list may have; more refuses it whole (subscriptions and "
            "`hashes import`)."
        ),
    )
    # Bad rows of a list are all counted; this many are remembered with their line numbers.
    max_row_errors: int = Field(
        100,
        ge=0,
        description="Bad rows remembered with their line numbers; the rest are only counted.",
    )

    @model_validator(mode="after")
    def _check(self) -> HashesSettings:
        if self.publish and not self.publish_public and not self.publish_token:
            raise ValueError(
                "publish is on without publish_token: set a token, or publish_public = true"
            )
        names = [sub.name for sub in self.subscriptions]
        if len(names) != len(set(names)):
            raise ValueError(f"subscription names must be unique: {names}")
        return self


class EmbeddingSubscription(HashSubscription):
    """A subscribed embedding list (an `[[embeddings.subscriptions]]` table)."""

    url: str = Field(
        pattern=r"^https?://",
        description="The other instance's `/api/v1/embeddings` (http or https).",
    )

    threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Cosine similarity at or above which this list's entries match (unset:"
        " `embeddings.threshold`).",
    )


# HMA's CLIP signal (tx-extension-clip): OpenCLIP's xlm-roberta-base-ViT-B-32 image tower,
# laion5b_s13b_b90k weights, L2-normalised; its version string names the model.
DEFAULT_EMBEDDING_MODEL = "xlm-roberta-base-ViT-B-32-laion5b_s13b_b90k-normalized"
# OpenCLIP's image transform for that model: shorter side to 224 (bicubic), centre crop,
# CLIP's mean and standard deviation.
DEFAULT_PREPROCESS = "resize224-bicubic-centercrop-clipnorm"


class EmbeddingsSettings(Section):
    """CLIP-family image embeddings of every miss, matched against confirmed positives."""

    model_path: Path = Field(
        Path("models/xlm-roberta-base-ViT-B-32-laion5b_s13b_b90k.onnx"),
        description="ONNX image encoder; while the file is missing the feature is off.",
    )
    model_id: str = Field(
        DEFAULT_EMBEDDING_MODEL,
        min_length=1,
        max_length=200,
        description="Names the model in lists: a list made with another model is refused.",
    )
    preprocess: str = Field(
        DEFAULT_PREPROCESS,
        pattern=r"^resize(\d+)-(bicubic|bilinear)-centercrop-(clipnorm|none)$",
        description="The encoder's input transform: resize<side>-<filter>-centercrop-<norm>.",
    )
    dim: int = Field(512, ge=8, le=4096, description="Dimensions of the model's embeddings.")
    threshold: float = Field(
        0.90,
        ge=0.0,
        le=1.0,
        description="Cosine similarity at or above which an entry matches (HMA's default).",
    )
    threads: int = Field(
        1, ge=1, le=64, description="Images encoded at once (each run uses intra_op_threads)."
    )
    intra_op_threads: int = Field(1, ge=1, le=64, description="ONNX Runtime threads per encoding.")
    max_queue: int = Field(
        16,
        ge=0,
        description="Images waiting for the encoder beyond this are judged without an embedding.",
    )
    index_dir: Path = Field(
        Path("embeddings-index"),
        description="Where the HNSW index is saved, so a restart loads it instead of rebuilding.",
    )
    index_dtype: str = Field(
        "i8", pattern="^(i8|f16)$", description="How the index stores vectors: i8 or f16."
    )
    index_connectivity: int = Field(
        24,
        ge=4,
        le=64,
        description="HNSW links per node (M): more is better recall, more memory, slower adds.",
    )
    index_expansion_add: int = Field(
        64, ge=8, le=1024, description="HNSW candidate list while adding (efConstruction)."
    )
    index_expansion_search: int = Field(
        512,
        ge=8,
        le=1024,
        description="HNSW candidate list while searching (efSearch): recall for lookup time.",
    )
    subscriptions: list[EmbeddingSubscription] = Field(
        default_factory=list, description="Embedding lists of other instances to match against."
    )
    max_list_bytes: int = Field(
        512 * 1024 * 1024,
        gt=0,
        description="A subscribed list larger than this (after decompression) is refused.",
    )
    max_list_rows: int = Field(
        100_000, gt=0, description="A subscribed list with more rows than this is refused."
    )
    max_row_errors: int = Field(
        100, ge=0, description="Bad rows of a list remembered with their line numbers."
    )
    sync_interval_s: float = Field(
        1.0, gt=0, description="How often the index checks the store for others' changes."
    )

    @model_validator(mode="after")
    def _check(self) -> EmbeddingsSettings:
        names = [sub.name for sub in self.subscriptions]
        if len(names) != len(set(names)):
            raise ValueError(f"subscription names must be unique: {names}")
        return self


class AdminSettings(Section):
    """The admin API (`/api/v1/admin/`) and review page (`/admin`)."""

    # Bearer token for /api/v1/admin/ and the login of /admin. Unset: both are off.
    token: SecretStr | None = Field(
        None,
        description=(
            "Admin API and review page token (at least 16 characters); unset turns both off."
        ),
    )
    # Whether an admin may turn on (blurred, greyscale, small) previews of quarantined items.
    previews: bool = Field(
        False,
        description=(
            "Allow admins to turn on previews (blurred, greyscale, small) of quarantined items."
        ),
    )
    preview_max_side: int = Field(160, ge=32, le=512, description="Longest side of a preview, px.")
    preview_blur_radius: float = Field(
        6.0, ge=2.0, le=50.0, description="Gaussian blur radius of previews."
    )
    session_ttl_s: float = Field(
        8 * 3600.0, gt=0, description="Review page session lifetime, seconds."
    )
    # Secure cookie: "auto" sets it when the request came over https (or X-Forwarded-Proto).
    cookie_secure: str = Field(
        "auto",
        pattern="^(auto|always|never)$",
        description=(
            "`Secure` cookie: `auto` (https or `X-Forwarded-Proto: https`), `always` or `never`."
        ),
    )
    max_sessions: int = Field(64, gt=0, description="Sessions kept; the oldest go first.")
    # Wrong tokens (API or login form) a client may send within the window before it has to
    # wait (429); counted per address (an IPv6 client per /64).
    max_failures: int = Field(
        10,
        gt=0,
        description=(
            "Wrong tokens (API and login form together) one client may send per window before it "
            "gets 429."
        ),
    )
    failure_window_s: float = Field(300.0, gt=0, description="That window, seconds.")

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() == "":
            return None
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("admin token must be at least 16 characters (use a random one)")
        return value


class QuarantineSettings(Section):
    """The admin quarantine, where held files wait for a decision."""

    # Where quarantined files are held (content-addressed; see horde_scanner/review/quarantine.py).
    dir: Path = Field(
        Path("quarantine"),
        description="Where the admin quarantine holds files (content-addressed).",
    )


class NotifySettings(Section):
    """Webhook notifications of new positives and backend down/up."""

    # Webhook for new positives and backend down/up; unset: no notifications.
    # Masked by `config show`: Discord's and Slack's webhook URLs carry their token.
    webhook_url: str | None = Field(
        None,
        description="Webhook for new positives and backend down/up; unset: no notifications.",
        json_schema_extra={"secret": True},
    )
    # Payload template (horde_scanner/data/webhook_templates.toml): json, matrix, discord, slack.
    template: str = Field(
        "json",
        pattern="^(json|matrix|discord|slack)$",
        description="Payload template: `json`, `matrix`, `discord` or `slack`.",
    )
    queue_size: int = Field(
        1000, gt=0, description="Events waiting to be sent before new ones are dropped (counted)."
    )
    timeout_s: float = Field(
        10.0,
        gt=0,
        description=(
            "Per POST; also the longest a stopping process waits to send what is still queued."
        ),
    )
    # How often backend.readiness() is looked at for down/up transitions.
    readiness_interval_s: float = Field(
        15.0, gt=0, description="How often backend readiness is checked for down/up events."
    )
    # Link to the review page put into messages, e.g. https://scanner.example/admin.
    admin_url: str | None = Field(
        None,
        description=(
            "Base URL of `/admin`, e.g. `https://scanner.example/admin`: adds a review `link` to "
            "events."
        ),
    )


class LemmyAction(StrEnum):
    """What may be done through Lemmy's API about a positive image (moderation/actions.py)."""

    REMOVE = "remove"  # remove the posts and comments that use the image (soft, reversible)
    PURGE = "purge"  # purge those posts and comments (gone from Lemmy's database)
    BAN = "ban"  # ban the uploader from the site, removing their content
    DELETE_IMAGE = "delete_image"  # delete the image through Lemmy
    REPORT = "report"  # report the posts to their communities' moderators


class LemmySettings(Section):
    """Lemmy's database, read-only (who uploaded a positive, where it is used, which instance it
    came from) and, for admin actions only, Lemmy's HTTP API as an admin account. Unset: both
    are off. See the Moderation page for the read-only role's SQL."""

    database_url: SecretStr | None = Field(
        None,
        description=(
            "Read-only PostgreSQL URL of Lemmy's database (a role granted only the columns "
            "provenance reads). Unset: provenance is off."
        ),
    )
    hostname: str | None = Field(
        None,
        description=(
            "Lemmy's own host name as in its image links. Unset: read from Lemmy's database "
            "(`local_site`)."
        ),
    )
    connect_timeout_s: float = Field(
        5.0, gt=0, le=120, description="Seconds to connect to Lemmy's database."
    )
    query_timeout_s: float = Field(
        10.0, gt=0, le=600, description="`statement_timeout` of each provenance query, seconds."
    )
    retry_s: float = Field(
        30.0,
        gt=0,
        le=86400,
        description="Seconds between tries while Lemmy's database cannot be asked.",
    )
    usage_window_days: float | None = Field(
        90.0,
        gt=0,
        description=(
            "Posts, comments and messages are searched for the image from its upload (or first "
            "sighting) to this many days after. Unset: all of them (slow on a big instance)."
        ),
    )
    url: str | None = Field(
        None,
        pattern=r"^https?://",
        description=(
            "Lemmy's URL for admin actions, e.g. `https://lemmy.example`. Unset: no actions."
        ),
    )
    username: str | None = Field(None, description="The admin account actions log in as.")
    password: SecretStr | None = Field(
        None, description="That account's password (or `password_file`)."
    )
    password_file: Path | None = Field(
        None, description="A file holding that account's password, read at each login."
    )
    totp_2fa_token_file: Path | None = Field(
        None, description="A file holding the account's current TOTP code, when 2FA is on."
    )
    api_version: Literal["auto", "0.18", "0.19", "1.0"] = Field(
        "auto",
        description="API form of the actions. `auto`: from the database's schema, else 0.19.",
    )
    api_timeout_s: float = Field(15.0, gt=0, le=300, description="Seconds per Lemmy API call.")
    reason: str = Field(
        "Confirmed positive image (horde-scanner)",
        max_length=1000,
        description="The reason sent with removals, purges, bans and reports.",
    )
    auto_actions: list[LemmyAction] = Field(
        default_factory=list,
        description=(
            "Actions (`report`, `remove`, `ban`, `purge`, `delete_image`) applied without asking, "
            "to admin-confirmed positives and deny-list matches only, never to a machine verdict. "
            "Empty: none."
        ),
    )

    @field_validator("database_url", "password")
    @classmethod
    def _empty_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty environment variable (a compose file's `${VAR:-}`) means "not set".
        return None if value is not None and value.get_secret_value() == "" else value

    @field_validator("url", "username", "hostname", mode="before")
    @classmethod
    def _empty_text_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _one_password(self) -> LemmySettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set lemmy.password or lemmy.password_file, not both")
        if self.auto_actions and not self.url:
            raise ValueError("lemmy.auto_actions needs lemmy.url and an admin account")
        return self


class MetricsSettings(Section):
    """The Prometheus endpoint `/metrics`."""

    enabled: bool = Field(True, description="Serve `/metrics` (Prometheus text format).")
    # Optional bearer token for /metrics (unset: open, like most exporters; bind to loopback).
    token: SecretStr | None = Field(
        None, description="If set, `/metrics` needs `Authorization: Bearer <token>`."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HORDE_SCANNER_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="forbid",
    )

    server: ServerSettings = Field(
        default_factory=ServerSettings, description="The HTTP service pict-rs calls."
    )
    validation: ValidationSettings = Field(
        default_factory=ValidationSettings, description="How an upload is answered."
    )
    media: MediaSettings = Field(
        default_factory=MediaSettings, description="Decoding limits and what is sent to backends."
    )
    horde: HordeSettings = Field(default_factory=HordeSettings, description="The AI Horde client.")
    store: StoreSettings = Field(
        default_factory=StoreSettings,
        description="Where verdicts, jobs and the audit log are kept.",
    )
    pictrs: PictrsSettings = Field(
        default_factory=PictrsSettings, description="pict-rs's internal API."
    )
    policy: PolicySettings = Field(
        default_factory=PolicySettings, description="The rules that turn signals into verdicts."
    )
    backend: BackendSettings = Field(
        default_factory=BackendSettings, description="Which path judges a miss."
    )
    scan: ScanSettings = Field(
        default_factory=ScanSettings, description="Storage sweeps (`horde-scanner scan`)."
    )
    hashes: HashesSettings = Field(
        default_factory=HashesSettings, description="Perceptual hashes and shared hash lists."
    )
    embeddings: EmbeddingsSettings = Field(
        default_factory=EmbeddingsSettings,
        description="Image embeddings of misses, matched against shared confirmed positives.",
    )
    local: LocalSettings = Field(
        default_factory=LocalSettings, description="CLIP in this process (extra `[gpu]`)."
    )
    prescreen: PrescreenSettings = Field(
        default_factory=PrescreenSettings, description="The CPU pre-screen (extra `[prescreen]`)."
    )
    workers: WorkerPoolSettings = Field(
        default_factory=WorkerPoolSettings, description="Remote GPU workers."
    )
    admin: AdminSettings = Field(
        default_factory=AdminSettings, description="The admin API and review page."
    )
    quarantine: QuarantineSettings = Field(
        default_factory=QuarantineSettings, description="The admin quarantine."
    )
    notify: NotifySettings = Field(
        default_factory=NotifySettings, description="Webhook notifications."
    )
    metrics: MetricsSettings = Field(
        default_factory=MetricsSettings, description="The Prometheus endpoint."
    )
    lemmy: LemmySettings = Field(
        default_factory=LemmySettings,
        description="Lemmy's database (provenance) and API (admin actions).",
    )
    log_level: str = Field(
        "INFO", description="Standard logging level: DEBUG, INFO, WARNING, ERROR."
    )

    @model_validator(mode="after")
    def _one_state_per_subscription(self) -> Settings:
        # Hash and embedding subscriptions keep their fetch state in one table, by name.
        both = {s.name for s in self.hashes.subscriptions} & {
            s.name for s in self.embeddings.subscriptions
        }
        if both:
            raise ValueError(
                f"hashes and embeddings subscriptions must have different names: {sorted(both)}"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _EnvSource(settings_cls), _DotEnvSource(settings_cls))


def _refuse(problems: list[str]) -> None:
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


class _EnvSource(EnvSettingsSource):
    def __call__(self) -> dict[str, Any]:
        _refuse(check_env(self.env_vars, self.settings_cls, "environment", cli_reads_it=True))
        return super().__call__()


class _DotEnvSource(DotEnvSettingsSource):
    """The `.env` of the working directory, which is often Lemmy's: only our keys are read."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k: v for k, v in super()._load_env_vars().items() if is_ours(k)}

    def __call__(self) -> dict[str, Any]:
        _refuse(check_env(self.env_vars, self.settings_cls, ".env", cli_reads_it=False))
        return super().__call__()


class _TomlSource(TomlConfigSettingsSource):
    def __call__(self) -> dict[str, Any]:
        problems = check_toml(self.toml_data, self.settings_cls)
        _refuse([f"config file {self.toml_file_path}: {p}" for p in problems])
        return super().__call__()


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the Settings tree, raising ConfigError with the offending key on bad input."""
    settings_cls: type[Settings] = Settings
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path}: not found")

        class FileSettings(Settings):
            @classmethod
            def settings_customise_sources(
                cls,
                settings_cls: type[BaseSettings],
                init_settings: PydanticBaseSettingsSource,
                env_settings: PydanticBaseSettingsSource,
                dotenv_settings: PydanticBaseSettingsSource,
                file_secret_settings: PydanticBaseSettingsSource,
            ) -> tuple[PydanticBaseSettingsSource, ...]:
                return (
                    init_settings,
                    _EnvSource(settings_cls),
                    _DotEnvSource(settings_cls),
                    _TomlSource(settings_cls, toml_file=path),
                )

        settings_cls = FileSettings
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except ValueError as exc:  # a TOML syntax error surfaces as tomllib's ValueError subclass
        where = f"config file {config_file}" if config_file is not None else "configuration"
        raise ConfigError(f"{where}: {exc}") from None


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        env = "HORDE_SCANNER_" + "__".join(str(p).upper() for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "list_type":
            msg += " (written as a JSON list in env and .env, e.g. '[\"abc\"]')"
        lines.append(f"{key} (env {env}): {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def value_sources(config_file: Path | None = None) -> dict[tuple[str, ...], str]:
    """Where each option that is not at its default was set: for each leaf key (a path of
    field names), the highest-priority source that holds it: `env HORDE_SCANNER_...`, `.env`
    or `config file PATH`. Raises ConfigError as load_settings does."""
    sources: list[tuple[str, PydanticBaseSettingsSource]] = [
        ("env", _EnvSource(Settings)),
        (".env", _DotEnvSource(Settings)),
    ]
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path}: not found")
        sources.append((f"config file {path}", _TomlSource(Settings, toml_file=path)))
    found: dict[tuple[str, ...], str] = {}
    for name, source in reversed(sources):  # lowest priority first; higher ones overwrite
        try:
            data = source()
        except ValueError as exc:  # a TOML syntax error
            raise ConfigError(f"{name}: {exc}") from None
        for key in _leaf_keys(Settings, data):
            if name == "env":
                found[key] = "env HORDE_SCANNER_" + "__".join(p.upper() for p in key)
            else:
                found[key] = name
    return found


def _leaf_keys(model: type[BaseModel], data: Mapping[str, Any]) -> list[tuple[str, ...]]:
    keys: list[tuple[str, ...]] = []
    fields = fields_of(model)  # open sections too: [backend.<kind>]
    for name, value in data.items():
        if name not in fields:
            continue
        sub = fields[name]
        if isinstance(sub, type) and issubclass(sub, BaseModel) and isinstance(value, Mapping):
            keys += [(name, *k) for k in _leaf_keys(sub, value)]
        else:
            keys.append((name,))
    return keys
