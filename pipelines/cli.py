"""The ``recloop`` command: a thin dispatcher over ``pipelines/commands/*``."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from pipelines import commands
from pipelines.core.settings import Settings

DESCRIPTION = """\
recloop — a workflow-orchestrated MLOps platform for recommender systems.

Every run writes under RECLOOP_HOME (default ~/.recloop). Settings come from RECLOOP_*
environment variables: RECLOOP_HOME, RECLOOP_REDIS_URL, RECLOOP_MLFLOW_URI, RECLOOP_SCALE,
RECLOOP_SEED, RECLOOP_MAX_BAD_ROW_SHARE, RECLOOP_MIN_VOLUME_RATIO (see README.md).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recloop",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        doc = (module.__doc__ or info.name).strip()
        name = getattr(module, "NAME", info.name.replace("_", "-"))
        p = sub.add_parser(
            name,
            help=doc.splitlines()[0],
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = Settings.from_env()
        return int(args._module.run(args, settings) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, ConnectionError) as exc:
        # Errors we raise on purpose carry a message that names the file / row / field.
        logging.getLogger("recloop").debug("traceback", exc_info=True)
        print(f"recloop {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
