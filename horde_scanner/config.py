"""The one configuration tree.

Sources, highest priority first: keyword arguments, environment variables
(`HORDE_SCANNER_` prefix, nested with `__`, e.g. `HORDE_SCANNER_HORDE__API_KEY`), a `.env` file in
the working directory, a TOML file given with `--config`, then the defaults below. Every option is
listed in README.md with its default; keep the two in step. Keys of other programs in `.env`
(Lemmy's) are skipped; misspelt keys of ours are refused by name (config_keys.py).
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

from horde_scanner.config_keys import check_env, check_toml, is_ours
from horde_scanner.media.types import DecodeLimits
from horde_scanner.verdict import Label

ANONYMOUS_HORDE_KEY = "0000000000"


class ConfigError(Exception):
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
    host: str = "127.0.0.1"
    port: int = Field(14051, ge=1, le=65535)
    # Ids pict-rs may put in the URL path (/api/v1/scan/<id>). Treat them as secrets.
    client_ids: list[str] = Field(default_factory=list)
    # Named ids, {name = secret}: the name is what the audit log, verdicts and exports record.
    clients: dict[str, str] = Field(default_factory=dict)
    # Networks accepted for the special id IPADDR (loopback always is). The default is what
    # pictrs-safety accepts: the private ranges, where pict-rs sits on a docker network.
    allowed_ips: list[str] = Field(default_factory=lambda: list(PRIVATE_NETWORKS))
    # Only requests from these addresses may set X-Forwarded-For.
    trusted_proxies: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(40 * 1024 * 1024, gt=0)
    # Complete uploads admitted (hashed, looked up, persisted) at once; the rest wait for a
    # slot, up to the deadline. Bodies are read before, without a slot (see below).
    max_concurrent_uploads: int = Field(128, gt=0)
    # Processes sharing the port (SO_REUSEPORT) and the store, for hosts with several cores.
    processes: int = Field(1, ge=1, le=64)
    # On SIGTERM: how long /readyz answers 503 before the listener closes (let a balancer's
    # health check see it), then how long uploads in flight may take to be answered.
    drain_s: float = Field(3.0, ge=0, le=300)
    shutdown_timeout_s: float = Field(30.0, gt=0, le=600)
    # Reading a body: after the grace, a sender must keep up this average rate or be cut off
    # (408); the whole body must be in by the validation deadline either way.
    upload_min_bytes_per_s: int = Field(32 * 1024, gt=0)
    upload_rate_grace_s: float = Field(2.0, ge=0)
    # After an upload is refused before its body was read (408 too slow, 413 too large), how
    # long what the sender still sends is read and dropped before the socket closes.
    linger_s: float = Field(2.0, ge=0, le=60)
    # Bodies being read are held in memory up to this many bytes in all; past it, in
    # temporary files (in upload_spool_dir; None: the system's temporary directory) up to
    # upload_spool_bytes, and beyond both an upload is refused (503, recorded).
    upload_memory_bytes: int = Field(64 * 1024 * 1024, gt=0)
    upload_spool_bytes: int = Field(2 * 1024 * 1024 * 1024, ge=0)
    upload_spool_dir: Path | None = None

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
    # pict-rs gives thumbnails 10 s in total; answer well before that.
    deadline_s: float = Field(8.0, gt=0, le=120)
    on_timeout: OnEvent = OnEvent.ACCEPT
    on_unreadable: OnEvent = OnEvent.ACCEPT
    reject_labels: list[Label] = Field(default_factory=lambda: [Label.CSAM])
    # Misses being decoded at once (each holds its upload's bytes until downscaled).
    max_decoding: int = Field(4, gt=0)
    verdict_cache_size: int = Field(100_000, ge=0)
    # A background judgement that keeps failing (backend down) becomes an `error` verdict
    # after this many tries (backoff doubles up to 5 minutes: about four hours in all).
    job_max_attempts: int = Field(50, gt=0)


class MediaSettings(Section):
    max_pixels: int = Field(64_000_000, gt=0)
    # Longest side sent to a backend: 512 px is one AI Horde tile.
    backend_max_side: int = Field(512, ge=64, le=3072)
    webp_quality: int = Field(85, ge=1, le=100)
    # Animations and video: frames judged per file (the first, then spread over the duration).
    max_frames: int = Field(8, ge=1, le=64)
    # An animation with more frames is unreadable (every frame of a GIF must be decoded).
    max_frame_count: int = Field(5_000, ge=1)
    # Pixels decoded over all frames of one file.
    max_total_pixels: int = Field(1_000_000_000, gt=0)
    # Decoding one file longer than this makes it unreadable.
    max_decode_s: float = Field(5.0, gt=0)
    # Frames this close (difference hash bits of 64, and mean colour) count as one.
    near_duplicate_bits: int = Field(4, ge=0, le=32)

    def limits(self, **override: Any) -> DecodeLimits:
        """The decoder's limits: every field of this section (DecodeLimits has the same names),
        with `override` for a caller that needs a different size (the review page's preview)."""
        names = {f.name for f in dataclasses.fields(DecodeLimits)}
        return DecodeLimits(**{**{n: getattr(self, n) for n in names}, **override})


class HordeSettings(Section):
    url: str = "https://aihorde.net/api"
    api_key: str = ANONYMOUS_HORDE_KEY
    contact_url: str = "https://github.com/horde-scanner/horde-scanner"
    # The `interrogation` form adds booru-style tags (lolicon, ...) at 3 kudos instead of 1.
    interrogation: bool = False
    slow_workers: bool = True
    max_in_flight: int = Field(90, gt=0, le=150)
    # Status polls of one request: the first this soon after the submit, then at this pace
    # while its forms wait for a worker, and faster while a worker is processing them.
    first_poll_s: float = Field(0.15, ge=0.05)
    poll_interval_s: float = Field(1.0, ge=0.1)
    processing_poll_s: float = Field(0.25, ge=0.11)
    # Our share of the Horde's status limit, 10/s for each ip + method + path (per request id).
    status_polls_per_s: int = Field(5, ge=1, le=10)
    # Our share of the Horde's 90 submits per minute per IP, in any 60 s (a burst goes at once).
    submits_per_min: int = Field(80, ge=1, le=90)
    # Read /v2/status/performance (queue length, workers) this often; 0 turns it off.
    performance_interval_s: float = Field(60.0, ge=0)
    # Kudos spent per UTC day at most; None: no budget. When spent, misses follow on_timeout
    # and are judged when the budget renews.
    max_kudos_per_day: float | None = Field(None, gt=0)
    # Give up on one request (and DELETE it) after this long.
    request_timeout_s: float = Field(600.0, gt=0)
    http_timeout_s: float = Field(20.0, gt=0)
    retries: int = Field(4, ge=0, le=10)
    maintenance_pause_s: float = Field(120.0, ge=0)
    # Failed calls in a row (refused, DNS, timeout, 5xx) that mark the AI Horde down, and how
    # often one heartbeat probes it while down.
    down_after_failures: int = Field(3, ge=1, le=100)
    probe_interval_s: float = Field(1.0, gt=0, le=300)
    # Animations and video: pack up to 4 frames into one 512 px 2x2 image (one request, a
    # quarter of the kudos) at the price of each frame being judged at 256 px.
    pack_frames: bool = False


class StoreSettings(Section):
    path: Path = Path("horde-scanner.db")
    # sqlite:///path (the default: `path` above) or postgresql://user:pass@host:port/db.
    url: str | None = None
    # PostgreSQL: how long a claimed job stays with the replica that took it without word
    # from it (renewed every third of this while judged); a dead replica's jobs wait this long.
    job_lease_s: float = Field(30.0, ge=1.0, le=3600.0)
    # PostgreSQL: connections per process.
    pool_size: int = Field(10, ge=2, le=200)

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
    url: str | None = None
    api_key: str | None = None
    # Pages of /internal/hashes (newest first) searched for a late positive's hash.
    search_pages: int = Field(20, gt=0)


class PolicySettings(Section):
    # A TOML policy file replacing the bundled one (horde_scanner/data/policy.toml).
    path: Path | None = None


class BackendKind(StrEnum):
    AUTO = "auto"
    HORDE = "horde"
    LOCAL = "local"
    HYBRID = "hybrid"


class BackendSettings(Section):
    # auto: local when a CUDA GPU (with the [gpu] extra) or a worker pool is configured, else
    # the AI Horde. hybrid: the fastest live path, falling back between local and the Horde.
    kind: BackendKind = BackendKind.AUTO
    # hybrid: a path whose typical latency exceeds this is only used when nothing faster is
    # live (default: validation.deadline_s).
    hybrid_budget_s: float | None = Field(None, gt=0)


class LocalSettings(Section):
    """The in-process CLIP scorer (extra [gpu]); used by backend local/hybrid/auto and by
    `horde-scanner worker`."""

    # Load CLIP in the service process. None (auto): when torch sees a CUDA GPU, or when
    # backend.kind is `local` and no worker pool is configured (CPU fallback: slow, seconds per
    # image for ViT-L/14). false: judge locally only through remote workers.
    in_process: bool | None = None
    # Hub name (looked up in the Hugging Face cache, downloaded unless `offline`) ...
    model: str = "openai/clip-vit-large-patch14"
    # ... or a directory holding a saved CLIP model and its tokenizer (wins over `model`).
    model_dir: Path | None = None
    cache_dir: Path | None = None
    offline: bool = False
    # auto: CUDA when torch sees a GPU, else CPU. "cpu" forces CPU; "cuda" fails without one.
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    fp16: bool = True
    batch_size: int = Field(16, ge=1, le=256)
    # How long the first request of a batch waits for company before the batch runs.
    batch_wait_ms: float = Field(5.0, ge=0, le=1000)
    # Requests waiting for the model beyond this count are refused (back-pressure).
    max_queue: int = Field(256, ge=1)


class PrescreenSettings(Section):
    """CPU nudity pre-screen (extra [prescreen]): NudeNet's bundled ONNX detector."""

    enabled: bool = False
    # An ONNX model with NudeNet's 18 classes; default: the one shipped in the nudenet wheel.
    model_path: Path | None = None
    resolution: int = Field(320, ge=64, le=1280)
    # Threads running the detector (each uses one core); more waiting images are refused.
    threads: int = Field(2, ge=1, le=64)
    max_queue: int = Field(64, ge=1)
    # Send images the pre-screen judged clean to the next backend too, in the background; a
    # positive second opinion becomes a late positive.
    second_opinion: bool = False
    second_opinion_max_pending: int = Field(100, ge=1)


_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class WorkerPoolSettings(Section):
    """Remote GPU workers pulling jobs over HTTP (pictrs-safety protocol); off without keys."""

    # API keys workers send in the `apikey` header, by name: {name = "secret"}. A plain list
    # (the old form) names its keys key1, key2, ... Remove a name to revoke that key.
    keys: dict[str, str] = Field(default_factory=dict)
    # A job taken by a worker that has not answered after this long goes to another worker.
    job_timeout_s: float = Field(30.0, gt=0)
    # A worker that has not polled for this long counts as gone.
    missing_after_s: float = Field(10.0, gt=0)
    # Jobs waiting for a worker beyond this count make the pool "saturated".
    max_queue: int = Field(32, ge=1)
    # Longest long-poll a worker may ask for (`GET /api/v1/pop?wait=S`).
    max_poll_wait_s: float = Field(20.0, ge=0, le=60)

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
    # None: the usual AWS variables and files (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID...).
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    # Quarantined objects go to this bucket (None: the scanned bucket) under this prefix.
    quarantine_bucket: str | None = None
    quarantine_prefix: str = "horde-scanner-quarantine/"
    # "path" for servers without per-bucket host names (MinIO, Garage behind one name).
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    timeout_s: float = Field(30.0, gt=0)


class SSHSettings(Section):
    # None: the SSH agent and the default keys in ~/.ssh.
    key_path: Path | None = None
    passphrase: str | None = None
    # None: ~/.ssh/known_hosts. Host keys are always checked unless check_host_key is false.
    known_hosts: Path | None = None
    check_host_key: bool = True
    # On the remote host; a relative path is under the login directory.
    quarantine_path: str = ".horde-scanner-quarantine"
    connect_timeout_s: float = Field(15.0, gt=0)


class ScanSettings(Section):
    # Files read and judged at once (each holds its bytes until judged). The AI Horde takes
    # seconds per image: a sweep it judges needs many in flight (its own cap: max_in_flight).
    concurrency: int = Field(32, gt=0, le=256)
    # Verdicts a quarantine/delete sweep acts on.
    act_labels: list[Label] = Field(default_factory=lambda: [Label.CSAM])
    # accept: leave unreadable files alone (reported); reject: act on them like positives.
    on_unreadable: OnEvent = OnEvent.ACCEPT
    # Local quarantine directory (0700). None: "quarantine" next to the store file.
    quarantine_path: Path | None = None
    # Bigger files are recorded as unreadable without being read.
    max_file_bytes: int = Field(100 * 1024 * 1024, gt=0)
    follow_interval_s: float = Field(60.0, gt=0)
    s3: S3Settings = Field(default_factory=S3Settings)
    ssh: SSHSettings = Field(default_factory=SSHSettings)


class HashTrust(StrEnum):
    # A match rejects at once (the verdict is the entry's label).
    DENY = "deny"
    # A match is accepted and judged as usual, and flagged for an admin (`hashes flagged`).
    REVIEW = "review"


# Origins the store uses for entries that are not from a subscription.
RESERVED_ORIGINS = frozenset({"local", "verdict"})


class HashSubscription(Section):
    # Short name: written as the origin of its entries, in logs and in `hashes flagged`.
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    url: str = Field(pattern=r"^https?://")
    trust: HashTrust = HashTrust.DENY
    refresh_s: float = Field(3600.0, ge=0.1)
    # Sent as `Authorization: Bearer <token>` when the publisher requires one (to the url's
    # own origin only).
    token: str | None = None
    timeout_s: float = Field(60.0, gt=0)
    # Redirects are followed within the url's origin only; other origins (scheme://host:port)
    # a redirect may lead to must be listed here.
    redirect_origins: list[Annotated[str, Field(pattern=r"^https?://[^/?#]+/?$")]] = Field(
        default_factory=list
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_ORIGINS:
            raise ValueError(f"{value!r} is reserved; choose another subscription name")
        return value


class HashesSettings(Section):
    # PDQ hashes within this Hamming distance (of 256 bits) match; 31 is Meta's recommendation.
    pdq_max_distance: int = Field(31, ge=0, le=128)
    # PDQ quality (0-100) below which a hash never matches, on either side.
    pdq_min_quality: int = Field(50, ge=0, le=100)
    # How often the in-memory index checks the store for changes made by other processes.
    sync_interval_s: float = Field(1.0, gt=0)
    # Serve this instance's list at GET /api/v1/hashes.
    publish: bool = False
    # Without a token, publishing must be made public explicitly.
    publish_public: bool = False
    publish_token: str | None = None
    # `source` column of this instance's own entries in the published list and exports.
    publish_source: str = "horde-scanner"
    # Also publish machine positives no admin has confirmed (README: a false positive of a
    # weak classifier then blocks every near copy on every subscriber, unreviewed).
    publish_unreviewed: bool = False
    subscriptions: list[HashSubscription] = Field(default_factory=list)
    # A subscribed list larger than this (bytes after decompression, or rows) is refused (its
    # last good copy is kept).
    max_list_bytes: int = Field(256 * 1024 * 1024, gt=0)
    max_list_rows: int = Field(1_000_000, gt=0)
    # Bad rows of a list are all counted; this many are remembered with their line numbers.
    max_row_errors: int = Field(100, ge=0)

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
    """A subscribed embedding list (GET /api/v1/embeddings of another instance)."""

    threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="cosine similarity at or above which this list's entries match (unset:"
        " embeddings.threshold)",
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
        description="ONNX image encoder; while the file is missing the feature is off",
    )
    model_id: str = Field(
        DEFAULT_EMBEDDING_MODEL,
        min_length=1,
        max_length=200,
        description="names the model in lists: a list made with another model is refused",
    )
    preprocess: str = Field(
        DEFAULT_PREPROCESS,
        pattern=r"^resize(\d+)-(bicubic|bilinear)-centercrop-(clipnorm|none)$",
        description="the encoder's input transform: resize<side>-<filter>-centercrop-<norm>",
    )
    dim: int = Field(512, ge=8, le=4096, description="dimensions of the model's embeddings")
    threshold: float = Field(
        0.90,
        ge=0.0,
        le=1.0,
        description="cosine similarity at or above which an entry matches (HMA's default)",
    )
    threads: int = Field(
        1, ge=1, le=64, description="images encoded at once (each run uses intra_op_threads)"
    )
    intra_op_threads: int = Field(
        1, ge=1, le=64, description="ONNX Runtime threads per encoding"
    )
    max_queue: int = Field(
        16,
        ge=0,
        description="images waiting for the encoder beyond this are judged without an embedding",
    )
    index_dir: Path = Field(
        Path("embeddings-index"),
        description="where the HNSW index is saved, so a restart maps it instead of rebuilding",
    )
    index_dtype: str = Field(
        "i8", pattern="^(i8|f16)$", description="how the index stores vectors: i8 or f16"
    )
    index_connectivity: int = Field(32, ge=4, le=64, description="HNSW links per node (M)")
    index_expansion_add: int = Field(
        64, ge=8, le=1024, description="HNSW candidate list while adding (efConstruction)"
    )
    index_expansion_search: int = Field(
        128, ge=8, le=1024, description="HNSW candidate list while searching (efSearch)"
    )
    subscriptions: list[EmbeddingSubscription] = Field(
        default_factory=list, description="embedding lists of other instances to match against"
    )
    max_list_bytes: int = Field(
        512 * 1024 * 1024,
        gt=0,
        description="a subscribed list larger than this (after decompression) is refused",
    )
    max_list_rows: int = Field(
        100_000, gt=0, description="a subscribed list with more rows than this is refused"
    )
    max_row_errors: int = Field(
        100, ge=0, description="bad rows of a list remembered with their line numbers"
    )
    sync_interval_s: float = Field(
        1.0, gt=0, description="how often the index checks the store for others' changes"
    )

    @model_validator(mode="after")
    def _check(self) -> EmbeddingsSettings:
        names = [sub.name for sub in self.subscriptions]
        if len(names) != len(set(names)):
            raise ValueError(f"subscription names must be unique: {names}")
        return self


class AdminSettings(Section):
    # Bearer token for /api/v1/admin/ and the login of /admin. Unset: both are off.
    token: SecretStr | None = None
    # Whether an admin may turn on (blurred, greyscale, small) previews of quarantined items.
    previews: bool = False
    preview_max_side: int = Field(160, ge=32, le=512)
    preview_blur_radius: float = Field(6.0, ge=2.0, le=50.0)
    session_ttl_s: float = Field(8 * 3600.0, gt=0)
    # Secure cookie: "auto" sets it when the request came over https (or X-Forwarded-Proto).
    cookie_secure: str = Field("auto", pattern="^(auto|always|never)$")
    max_sessions: int = Field(64, gt=0)
    # Wrong tokens (API or login form) a client may send within the window before it has to
    # wait (429); counted per address (an IPv6 client per /64).
    max_failures: int = Field(10, gt=0)
    failure_window_s: float = Field(300.0, gt=0)

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() == "":
            return None
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("admin token must be at least 16 characters (use a random one)")
        return value


class QuarantineSettings(Section):
    # Where quarantined files are held (content-addressed; see horde_scanner/review/quarantine.py).
    dir: Path = Path("quarantine")


class NotifySettings(Section):
    # Webhook for new positives and backend down/up; unset: no notifications.
    webhook_url: str | None = None
    # Payload template (horde_scanner/data/webhook_templates.toml): json, matrix, discord, slack.
    template: str = Field("json", pattern="^(json|matrix|discord|slack)$")
    queue_size: int = Field(1000, gt=0)
    timeout_s: float = Field(10.0, gt=0)
    # How often backend.readiness() is looked at for down/up transitions.
    readiness_interval_s: float = Field(15.0, gt=0)
    # Link to the review page put into messages, e.g. https://scanner.example/admin.
    admin_url: str | None = None


class MetricsSettings(Section):
    enabled: bool = True
    # Optional bearer token for /metrics (unset: open, like most exporters; bind to loopback).
    token: SecretStr | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HORDE_SCANNER_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="forbid",
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    media: MediaSettings = Field(default_factory=MediaSettings)
    horde: HordeSettings = Field(default_factory=HordeSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    pictrs: PictrsSettings = Field(default_factory=PictrsSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    backend: BackendSettings = Field(default_factory=BackendSettings)
    scan: ScanSettings = Field(default_factory=ScanSettings)
    hashes: HashesSettings = Field(default_factory=HashesSettings)
    embeddings: EmbeddingsSettings = Field(
        default_factory=EmbeddingsSettings,
        description="image embeddings matched against shared confirmed positives",
    )
    local: LocalSettings = Field(default_factory=LocalSettings)
    prescreen: PrescreenSettings = Field(default_factory=PrescreenSettings)
    workers: WorkerPoolSettings = Field(default_factory=WorkerPoolSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    quarantine: QuarantineSettings = Field(default_factory=QuarantineSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log_level: str = "INFO"

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
