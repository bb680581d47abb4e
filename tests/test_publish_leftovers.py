"""A process killed while it writes a folder or file atomically leaves a ``.tmp-`` temporary
beside it; the next write of the same path deletes it (issue 17, crash injection: a rerun after
a SIGKILL during training left the model's half-written temporary folder behind). A temporary
of a live writer is left alone."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from pipelines.core import schema

REPO = Path(__file__).resolve().parents[1]
WRITER = """
import sys, time
from pathlib import Path
from pipelines.core import schema

def build(tmp):
    (tmp / "part-0.parquet").write_bytes(b"half")
    Path(sys.argv[2]).write_text("building")
    time.sleep(60)

schema.publish_dir(build, Path(sys.argv[1]))
"""


def kill_while_publishing(final: Path, tmp_path: Path) -> None:
    """Start a process that publishes ``final`` and SIGKILL it in the middle of its build."""
    flag = tmp_path / "flag"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(final), str(flag)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    deadline = time.monotonic() + 60
    while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert flag.exists(), "the writer never reached its build"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_rerun_after_a_kill_leaves_no_temporary(tmp_path: Path) -> None:
    root = tmp_path / "models"
    final = root / "date=2026-01-02"
    kill_while_publishing(final, tmp_path)
    leftovers = [p.name for p in root.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-date=2026-01-02-")
    schema.publish_dir(lambda tmp: (tmp / "part-0.parquet").write_bytes(b"full"), final)
    assert [p.name for p in root.iterdir()] == ["date=2026-01-02"]
    assert (final / "part-0.parquet").read_bytes() == b"full"


def test_live_and_foreign_temporaries_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "items.parquet"
    host = socket.gethostname()
    live = tmp_path / f".tmp-items.parquet-{os.getpid()}@{host}-0000beef"
    foreign = tmp_path / ".tmp-items.parquet-1@another-host-0000cafe"
    other = tmp_path / f".tmp-users.parquet-999999999@{host}-0000f00d"  # another file's
    dead = tmp_path / f".tmp-items.parquet-999999999@{host}-0000dead"  # above any pid_max
    for p in (live, foreign, other, dead):
        p.write_bytes(b"x")
    schema.write_table_atomic(pd.DataFrame({"item_id": ["i1"]}), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, foreign.name, other.name, path.name]
    )


def test_index_save_sweeps_a_dead_writers_folder_and_load_recovers_a_backup(tmp_path: Path):
    """The FAISS index folder is published like a partition (it had its own two renames with
    no recovery: a kill between them left no index, and killed writers' ``.tmp-``/``.old-``
    folders stayed)."""
    import numpy as np

    from pipelines.retrieval.faiss_index import ItemIndex, build_index, index_dir

    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    idx = build_index(x, sample_queries=x[:5], kind="flat", model_version="v1")
    target = index_dir(tmp_path, "v1")
    dead = tmp_path / f".tmp-{target.name}-999999999@{socket.gethostname()}-0000dead"
    dead.mkdir()
    (dead / "index.faiss").write_bytes(b"half")
    idx.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    idx.save(tmp_path)  # replaced: still one folder, no .old- left
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    os.replace(target, tmp_path / f"{schema.BACKUP_PREFIX}{target.name}")  # killed mid-swap
    back = ItemIndex.load(target)
    assert back.n_items == 50 and sorted(p.name for p in tmp_path.iterdir()) == [target.name]
