"""Who may ask for validation: a configured client id in the path, or the special id IPADDR
from loopback or a network in `server.allowed_ips` (by default the private ranges, as
pictrs-safety accepts). X-Forwarded-For counts only from a trusted proxy."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets

from aiohttp import web

from horde_scanner.config import ServerSettings
from horde_scanner.store.interfaces import AuditStore

IPADDR = "IPADDR"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

log = logging.getLogger(__name__)


class ClientAuth:
    def __init__(self, settings: ServerSettings) -> None:
        # (name, secret): what is recorded is the name, never the secret in the URL.
        self._named = [(client_tag(i), i) for i in settings.client_ids if i and i != IPADDR]
        self._named += list(settings.clients.items())
        self._ids = [secret for _, secret in self._named]
        self._allowed = [ipaddress.ip_network(n, strict=False) for n in settings.allowed_ips]
        self._proxies = [ipaddress.ip_network(n, strict=False) for n in settings.trusted_proxies]

    def client_address(self, request: web.Request) -> str | None:
        peer = request.remote
        forwarded = request.headers.get("X-Forwarded-For")
        if peer and forwarded and _in(peer, self._proxies):
            # Walk from the right: the first hop not ours is the client.
            for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
                if not _in(hop, self._proxies):
                    return hop
        return peer

    def allows(self, request: web.Request, client_id: str) -> bool:
        if client_id == IPADDR:
            address = self.client_address(request)
            if address is None:
                return False
            return ipaddr_allowed(address, self._allowed)
        # Constant-time comparison: the id is the secret.
        return any(secrets.compare_digest(client_id.encode(), i.encode()) for i in self._ids)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._named]

    def recorded_as(self) -> list[tuple[str, str]]:
        """(secret, name) of every configured client: what to rewrite in rows from releases
        that recorded the secret itself."""
        return [(secret, name) for name, secret in self._named]

    def name_for(self, client_id: str) -> str:
        """What to record for an allowed client id: its configured name, a short tag of an
        unnamed one (first 8 hex of its sha256: not reversible), or IPADDR."""
        found = IPADDR
        for name, secret in self._named:
            # Every entry is compared, in constant time: the id is the secret.
            if secrets.compare_digest(client_id.encode(), secret.encode()):
                found = name
        return found


def client_tag(client_id: str) -> str:
    return "id-" + hashlib.sha256(client_id.encode()).hexdigest()[:8]


def ipaddr_allowed(address: str, allowed: list[Network]) -> bool:
    """Whether a client at `address` may use the id IPADDR."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d
    return ip.is_loopback or any(ip in net for net in allowed)


def _in(address: str, networks: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


async def forget_raw_ids(auth: ClientAuth, store: AuditStore) -> int:
    """Rows written before clients were recorded by name hold `upload:<secret>`: rewrite them
    to the name now recorded (an export or the admin page would otherwise show the secret)."""
    changed = await store.rename_sources(
        {f"upload:{secret}": f"upload:{name}" for secret, name in auth.recorded_as()}
    )
    if changed:
        log.warning(
            "%d stored rows named a client by its secret id (an older release); they now name "
            "it as new rows do",
            changed,
        )
    return changed
