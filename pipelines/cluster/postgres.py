"""PostgreSQL on loopback for the local cluster (Airflow's and MLflow's metadata), run the way
Debian runs it: its own binaries (``/usr/lib/postgresql/<major>/bin``), as the ``postgres``
system user.

PostgreSQL refuses to run as root. When this process is root, every server command runs through
``runuser -u postgres --`` and the data directory belongs to ``postgres``; that user must be able
to reach it (execute permission on every parent), which a workspace inside a mode-0700 temporary
folder or under ``/root`` is not. :func:`data_dir_for` says where the data then lives instead
(``/var/lib/recloop/postgres-<hash of the workspace>``), and ``recloop cluster status`` prints it.
As another user, the server runs as that user with the data under the workspace.

Authentication is ``trust`` on loopback only (``listen_addresses=127.0.0.1``, the Unix socket in
the data directory): the local cluster is a development topology; Kubernetes uses the Secret of
``infra/k8s``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SHARED_ROOT = Path("/var/lib/recloop")
"""Where the data directory goes when the workspace is out of the ``postgres`` user's reach."""

DATABASES = ("mlflow", "airflow")
"""Databases :func:`ensure_databases` creates: the MLflow tracking server's store and Airflow's
metadata database."""


class PostgresError(RuntimeError):
    """A PostgreSQL command failed; the message names the command and quotes its output."""


@dataclass(frozen=True)
class Postgres:
    """One local server: ``bin_dir`` (``pg_ctl``, ``initdb``), ``data_dir``, ``port`` (TCP on
    127.0.0.1) and ``run_as`` (``"postgres"`` when this process is root, else ``None``)."""

    bin_dir: Path
    data_dir: Path
    port: int
    run_as: str | None

    @property
    def log_path(self) -> Path:
        """The server's log (inside the data directory: ``run_as`` can write there)."""
        return self.data_dir / "recloop-server.log"

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        """SQLAlchemy URL of ``database`` (user ``postgres``, trust auth on loopback)."""
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"


def find_bin_dir() -> Path:
    """Directory of ``pg_ctl`` and ``initdb``: Debian's newest ``/usr/lib/postgresql/*/bin``, else
    the one on ``PATH``. Raises :class:`PostgresError` naming the package when neither exists."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)  # fmt: skip
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    raise PostgresError(
        "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH): "
        "run `bash infra/cluster.sh up`, which installs Debian's postgresql, or apt-get install it"
    )


def reachable_by(user: str, path: Path) -> bool:
    """Whether ``user`` can traverse every existing parent of ``path`` (``runuser ... test -x``)."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    res = subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(probe)],
                         capture_output=True, check=False)  # fmt: skip
    return res.returncode == 0


def data_dir_for(workspace: Path, run_as: str | None) -> Path:
    """``<workspace>/cluster/postgres`` when ``run_as`` (or this user) can reach it, else
    ``/var/lib/recloop/postgres-<sha256(workspace)[:12]>`` (one per workspace, reused)."""
    wanted = Path(workspace).resolve() / "cluster" / "postgres"
    if run_as is None or reachable_by(run_as, wanted.parent):
        return wanted
    digest = hashlib.sha256(str(Path(workspace).resolve()).encode()).hexdigest()[:12]
    return SHARED_ROOT / f"postgres-{digest}"


def for_workspace(workspace: Path, port: int) -> Postgres:
    """The workspace's server description (nothing is started)."""
    run_as = "postgres" if os.geteuid() == 0 else None
    return Postgres(find_bin_dir(), data_dir_for(workspace, run_as), port, run_as)


def _run(pg: Postgres, args: list[str], what: str) -> str:
    cmd = (["runuser", "-u", pg.run_as, "--"] if pg.run_as else []) + args
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        out = (res.stdout + res.stderr).strip()[-2000:]
        raise PostgresError(f"{what} failed ({' '.join(cmd)}), exit {res.returncode}: {out}")
    return res.stdout


def initdb(pg: Postgres) -> bool:
    """Create the data directory (owned by ``run_as``) unless it holds a cluster already.
    Returns whether a new cluster was created."""
    if (pg.data_dir / "PG_VERSION").exists():
        return False
    pg.data_dir.mkdir(parents=True, exist_ok=True)
    pg.data_dir.chmod(0o700)
    if pg.run_as:
        shutil.chown(pg.data_dir, user=pg.run_as, group=pg.run_as)
    _run(pg, [str(pg.bin_dir / "initdb"), "-D", str(pg.data_dir), "-U", "postgres",
              "--auth=trust", "-E", "UTF8", "--no-instructions"], "initdb")  # fmt: skip
    return True


def is_running(pg: Postgres) -> bool:
    """Whether ``pg_ctl status`` finds the server of ``data_dir`` running."""
    if not (pg.data_dir / "PG_VERSION").exists():
        return False
    try:
        _run(pg, [str(pg.bin_dir / "pg_ctl"), "-D", str(pg.data_dir), "status"], "pg_ctl status")
    except PostgresError:
        return False
    return True


def start(pg: Postgres) -> None:
    """initdb when needed, then start on 127.0.0.1:``port`` (socket in the data directory) and
    wait until it accepts connections. A running server is left as it is."""
    initdb(pg)
    if is_running(pg):
        return
    opts = f"-p {pg.port} -k {pg.data_dir} -c listen_addresses=127.0.0.1"
    _run(pg, [str(pg.bin_dir / "pg_ctl"), "-D", str(pg.data_dir), "-l", str(pg.log_path),
              "-o", opts, "-w", "-t", "60", "start"], "pg_ctl start")  # fmt: skip


def stop(pg: Postgres) -> None:
    """Fast shutdown (``-m fast``), waiting for it; nothing when it is not running."""
    if is_running(pg):
        _run(pg, [str(pg.bin_dir / "pg_ctl"), "-D", str(pg.data_dir), "-m", "fast", "-w",
                  "stop"], "pg_ctl stop")  # fmt: skip


def ensure_databases(pg: Postgres, names: tuple[str, ...] = DATABASES) -> list[str]:
    """Create each database in ``names`` that does not exist yet; returns those created."""
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=pg.port, user="postgres", dbname="postgres")
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    created = []
    try:
        with conn.cursor() as cur:
            for name in names:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
                    created.append(name)
    finally:
        conn.close()
    return created
