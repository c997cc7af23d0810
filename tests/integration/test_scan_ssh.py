"""Sweeps over SSH/SFTP: a real OpenSSH `sshd` (Debian's openssh-server) started here on a
loopback port with a generated host key and user key; the "remote" tree is a directory of
this machine, so the tests can see that moves and deletes happened on the remote side."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

asyncssh = pytest.importorskip("asyncssh")

from horde_scanner.backends.mock import MockBackend  # noqa: E402
from horde_scanner.runtime.sweeps import run_apply, run_release, run_scan  # noqa: E402
from horde_scanner.sources.source import SourceError  # noqa: E402
from horde_scanner.sweep.actions import Action  # noqa: E402
from tests.scan_helpers import action_rows, audit_rows, cli, cli_env, scan_settings  # noqa: E402
from tests.scan_trees import pictrs_tree  # noqa: E402

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class Sshd:
    port: int
    user: str
    key: Path
    known_hosts: Path
    other_key: Path

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"

    def ssh_settings(self, **extra: Any) -> dict[str, Any]:
        return {"key_path": self.key, "known_hosts": self.known_hosts, **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_key(path: Path, key: Any) -> None:
    key.write_private_key(str(path))
    path.chmod(0o600)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if not os.path.exists(SSHD):
        pytest.skip("sshd not installed (make system-deps installs openssh-server)")
    d = tmp_path_factory.mktemp("sshd")
    host_key, user_key, other = (asyncssh.generate_private_key("ssh-ed25519") for _ in range(3))
    _write_key(d / "host_key", host_key)
    _write_key(d / "id_user", user_key)
    _write_key(d / "id_other", other)
    (d / "authorized_keys").write_bytes(user_key.export_public_key())
    port = _free_port()
    (d / "known_hosts").write_bytes(f"[127.0.0.1]:{port} ".encode() + host_key.export_public_key())
    (d / "sshd_config").write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d / "host_key"}
PidFile {d / "sshd.pid"}
AuthorizedKeysFile {d / "authorized_keys"}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
"""
    )
    # sshd refuses to start without its privilege-separation directory.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
        stdout=subprocess.DEVNULL,
        stderr=open(d / "sshd.log", "wb"),  # noqa: SIM115
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(
                        "sshd did not start: " + (d / "sshd.log").read_text()
                    ) from None
                time.sleep(0.05)
        yield Sshd(port, getpass.getuser(), d / "id_user", d / "known_hosts", d / "id_other")
    finally:
        proc.terminate()
        proc.wait(10)


async def test_sweep_acts_on_the_remote_host(tmp_path: Path, sshd: Sshd):
    tree = pictrs_tree()
    remote = tmp_path / "remote-files"
    tree.write(remote)
    rq = tmp_path / "remote-quarantine"
    db = tmp_path / "s.db"
    settings = scan_settings(db, scan={"ssh": sshd.ssh_settings(quarantine_path=str(rq))})
    backend = MockBackend()
    report = await run_scan(settings, sshd.url(remote), backend=backend)
    c = report.counts
    assert c.listed == len(tree.files) and c.not_media == 3 and c.csam == 2 and c.nsfw == 1
    again = await run_scan(settings, sshd.url(remote), backend=backend)
    assert again.counts.seen == len(tree.files) and again.counts.bytes_read == 0

    (applied,) = await run_apply(settings, action=Action.QUARANTINE)
    assert applied.counts.acted == 2
    reds = tree.with_label("csam")
    assert not any((remote / r).exists() for r in reds)
    assert stat.S_IMODE(rq.stat().st_mode) == 0o700 and len(list(rq.iterdir())) == 2
    locations = {a["detail"]["location"] for a in audit_rows(db, "scan_action")}
    assert {Path(loc).parent for loc in locations} == {rq}

    first = action_rows(db)[0]
    (restored,) = await run_release(settings, str(first[0]))
    assert restored.endswith(first[1]) and (remote / first[1]).exists()

    # Delete removes the file on the remote side.
    victim = tree.with_label("nsfw")[0]
    nsfw_too = scan_settings(db, scan={"ssh": sshd.ssh_settings(), "act_labels": ["nsfw"]})
    deleted = await run_scan(nsfw_too, sshd.url(remote), action=Action.DELETE, backend=backend)
    assert deleted.counts.acted == 1 and not (remote / victim).exists()
    assert any("prune_missing" in n for n in deleted.notes)


async def test_cli_over_ssh_url(tmp_path: Path, sshd: Sshd):
    tree = pictrs_tree(v04={"green": 2}, v057={"red": 1}, thumbnails=0, non_media=False)
    remote = tmp_path / "files"
    tree.write(remote)
    from horde_scanner.testing.horde import FakeHorde

    async with FakeHorde(latency=0.05) as horde:
        env = cli_env(
            tmp_path / "s.db",
            horde.url,
            HORDE_SCANNER_SCAN__SSH__KEY_PATH=str(sshd.key),
            HORDE_SCANNER_SCAN__SSH__KNOWN_HOSTS=str(sshd.known_hosts),
            HORDE_SCANNER_SCAN__SSH__QUARANTINE_PATH=str(tmp_path / "rq"),
        )
        result = await cli(["scan", sshd.url(remote), "--action", "quarantine"], env)
    assert result.exit_code == 1, result.output
    assert f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{remote}" in result.output
    assert not (remote / tree.with_label("csam")[0]).exists()
    assert len(list((tmp_path / "rq").iterdir())) == 1


async def test_wrong_host_key_or_user_key_stops_before_any_work(tmp_path: Path, sshd: Sshd):
    remote = tmp_path / "files"
    remote.mkdir()
    db = tmp_path / "s.db"
    stranger = tmp_path / "known_hosts"
    stranger.write_bytes(
        f"[127.0.0.1]:{sshd.port} ".encode()
        + asyncssh.generate_private_key("ssh-ed25519").export_public_key()
    )
    bad_host = scan_settings(db, scan={"ssh": sshd.ssh_settings(known_hosts=stranger)})
    with pytest.raises(SourceError, match="host key not trusted"):
        await run_scan(bad_host, sshd.url(remote), backend=MockBackend())
    bad_user = scan_settings(db, scan={"ssh": sshd.ssh_settings(key_path=sshd.other_key)})
    with pytest.raises(SourceError, match="authentication as .* failed"):
        await run_scan(bad_user, sshd.url(remote), backend=MockBackend())
    missing = scan_settings(db, scan={"ssh": sshd.ssh_settings()})
    with pytest.raises(SourceError, match="no such directory"):
        await run_scan(missing, sshd.url(tmp_path / "nope"), backend=MockBackend())
    # Explicitly switching the check off is the only way past an unknown host key.
    unchecked = scan_settings(
        db, scan={"ssh": sshd.ssh_settings(known_hosts=stranger, check_host_key=False)}
    )
    report = await run_scan(unchecked, sshd.url(remote), backend=MockBackend())
    assert report.counts.listed == 0
    import sqlite3

    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM scan_runs").fetchone()[0] == 1
