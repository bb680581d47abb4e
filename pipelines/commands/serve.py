"""Serve recommendations over HTTP: the champion (and challenger) bundle from the registry.

  recloop serve [--host 127.0.0.1] [--port 8000] [--workers N] [--max-in-flight N] [--reload-s S]
                [--allow-remote]

Runs the ASGI app of ``serving.app`` under uvicorn, bound to loopback. A non-loopback --host
(``0.0.0.0``, ``::``, a LAN address or any name but ``localhost``) is refused (exit 2) unless
--allow-remote is given AND RECLOOP_ADMIN_TOKEN is set: every endpoint then answers off the
machine, in clear text (put a TLS proxy in front). The service loads the bundles the registry aliases ``champion`` / ``challenger``
point to (`recloop run` registers them, the gate moves the aliases), re-checks them every
--reload-s seconds and swaps a new one in after a smoke test; impressions are logged under
RECLOOP_HOME/serving/impressions/date=D/. Admin endpoints (/admin/reload, /admin/experiment)
are on only when RECLOOP_ADMIN_TOKEN is set (at least 16 characters); send it as
`Authorization: Bearer <token>`. Other knobs: RECLOOP_SERVE_* (see serving/config.py).
"""

from __future__ import annotations

import argparse
import ipaddress

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    parser.add_argument(
        "--allow-remote", action="store_true",
        help="allow a non-loopback --host (also needs RECLOOP_ADMIN_TOKEN)",
    )  # fmt: skip
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--max-in-flight", type=int, help="requests at once before 503s")
    parser.add_argument("--reload-s", type=float, help="seconds between registry alias checks")
    parser.add_argument(
        "--workers", type=int, default=1,
        help="server processes (each loads the bundles; use the cores: the GIL bounds one)",
    )  # fmt: skip
    parser.add_argument("--log-level", default="info", help="uvicorn log level")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` stays on this machine: ``localhost`` or a loopback address
    (``127.0.0.0/8``, ``::1``); any other name is not resolved, and not loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_remote: bool, admin_enabled: bool) -> None:
    """``ValueError`` (exit 2, nothing bound) for a non-loopback ``host`` without both
    ``--allow-remote`` and an admin token."""
    if is_loopback(host) or (allow_remote and admin_enabled):
        return
    missing = [
        *([] if allow_remote else ["pass --allow-remote"]),
        *([] if admin_enabled else ["set RECLOOP_ADMIN_TOKEN (at least 16 characters)"]),
    ]
    raise ValueError(
        f"refusing to bind {host!r}: it is reachable beyond this machine, in clear text; "
        f"{' and '.join(missing)} to allow it (both --allow-remote and RECLOOP_ADMIN_TOKEN "
        "are needed), or bind 127.0.0.1"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    import logging
    import os

    import uvicorn

    from serving.config import ServingConfig

    cfg = ServingConfig.from_env()  # fail here, not in every worker, on a bad variable
    check_bind(args.host, args.allow_remote, cfg.admin_enabled)
    if args.max_in_flight:
        os.environ["RECLOOP_SERVE_MAX_IN_FLIGHT"] = str(args.max_in_flight)
    if args.reload_s is not None:
        os.environ["RECLOOP_SERVE_RELOAD_S"] = str(args.reload_s)
    # /feedback and /admin across processes: this service's workers, and, with RECLOOP_SERVE_ID
    # naming a service several `recloop serve` replicas make up (pipelines/cluster), the others
    replicas = 2 if os.environ.get("RECLOOP_SERVE_ID") else 1
    os.environ["RECLOOP_SERVE_PROCESSES"] = str(max(1, args.workers, replicas))
    ServingConfig.from_env()  # the variables set above, checked once more
    os.environ.update(settings.as_env())
    if not is_loopback(args.host):
        logging.getLogger("recloop.serve").warning(
            "binding %s (--allow-remote): the service is reachable beyond this machine, in "
            "clear text",
            args.host,
        )
    settings.ensure_dirs()
    uvicorn.run(
        "serving.app:app_from_env", factory=True, host=args.host, port=args.port,
        workers=max(1, args.workers), log_level=args.log_level, access_log=False,
    )  # fmt: skip
    return 0
