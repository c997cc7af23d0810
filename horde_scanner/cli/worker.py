"""`horde-scanner worker`: judge a service's images with local CLIP, post the
results back."""

from __future__ import annotations

from pathlib import Path

import click

from horde_scanner.cli.common import run, settings_of


@click.command()
@click.option(
    "--server",
    required=True,
    envvar="HORDE_SCANNER_WORKER_SERVER",
    help="Base URL of the horde-scanner service, e.g. http://scanner:14051.",
)
@click.option(
    "--key",
    required=True,
    envvar="HORDE_SCANNER_WORKER_KEY",
    help="One of the service's workers.keys (env HORDE_SCANNER_WORKER_KEY).",
)
@click.option("--name", default=None, help="Worker name shown by the service (default: host).")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=None,
    help="Images in flight at once (default: local.batch_size).",
)
@click.option(
    "--poll-wait",
    type=click.FloatRange(0, 60),
    default=10.0,
    show_default=True,
    help="Long-poll seconds per request when the service has no work.",
)
@click.option(
    "--model-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Saved CLIP model directory (overrides local.model_dir).",
)
@click.option("--device", default=None, help="auto, cpu or cuda[:N] (overrides local.device).")
@click.pass_context
def worker(
    ctx: click.Context,
    server: str,
    key: str,
    name: str | None,
    concurrency: int | None,
    poll_wait: float,
    model_dir: Path | None,
    device: str | None,
) -> None:
    """Judge a service's images with local CLIP (extra [gpu]) and post the results back."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise click.BadParameter("expected an http:// or https:// URL", param_hint="--server")
    settings = settings_of(ctx)
    local = settings.local.model_copy(
        update={k: v for k, v in {"model_dir": model_dir, "device": device}.items() if v}
    )
    from horde_scanner.backends import plugins
    from horde_scanner.backends.base import Backend
    from horde_scanner.policy.rules import Policy
    from horde_scanner.runtime import open_runtime

    async def go() -> None:
        async with open_runtime(settings) as rt:
            policy = rt.policy()
            backend = plugins.local_clip_backend(local, policy.clip.phrases)
            rt.on_close(backend.aclose)
            await _work(backend, policy)

    async def _work(backend: Backend, policy: Policy) -> None:
        await plugins.run_worker(
            server,
            key,
            backend,
            name=name or socket.gethostname(),
            concurrency=concurrency or local.batch_size,
            poll_wait_s=poll_wait,
            limits=settings.media.limits(),
            policy=policy,
        )

    try:
        run(go)
    except KeyboardInterrupt:
        click.echo("worker stopped", err=True)
