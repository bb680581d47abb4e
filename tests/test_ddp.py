"""Data-parallel training (issue 19): the two-tower and the DLRM ranker in 2 DDP processes on CPU
(gloo, launched by torchrun) reach the quality of 1 process on the same seed, the ranks end with
the same weights, and ``recloop train --nproc 2`` saves an artifact that loads and recommends
through the normal path.

Tolerances (stated; seeded synthetic blocks, 240 users): with 2 processes the two-tower's best
held-out full-softmax loss is within 2 % of 1 process and its held-out recall@10 within 0.05; the
ranker's validation AUC within 0.01. The model-level run starts its 2 ranks directly with
torchrun's environment (one launcher process less); the CLI run goes through torchrun itself."""

from __future__ import annotations

import json
import os
import re
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
DAYS = ["2026-01-01", "2026-01-02"]
RANK_LINE = re.compile(r"distributed: rank (\d) of world size (\d)")
KEPT = re.compile(r"keeping epoch \d+ \(validation loss ([0-9.]+)\)")

#: fits both models on seeded synthetic blocks; run in-process (1 process) or under torchrun
WORKER = r'''
import json, sys
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else ".")
from models.dlrm import DLRMRanker
from models.two_tower import TwoTower
from pipelines.core import distributed


def blocks(seed=0, n_users=240, n_items=120, n_blocks=6, per_user=6):
    """Users take items of their block; one more per user held out for recall."""
    rng = np.random.default_rng(seed)
    ub, ib = rng.integers(0, n_blocks, n_users), np.arange(n_items) % n_blocks
    rows, cols, test = [], [], []
    for u in range(n_users):
        picks = rng.choice(np.flatnonzero(ib == ub[u]), per_user + 1, replace=False)
        rows += [u] * per_user
        cols += list(picks[:-1])
        test.append(picks[-1])
    m = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_users, n_items))
    users = pd.DataFrame({"segment": [f"s{b}" for b in ub]})
    items = pd.DataFrame({"category": [f"c{b}" for b in ib]})
    return m, users, items, np.array(test)


def clicks(seed, n=5000):
    rng = np.random.default_rng(seed)
    seg, cat, x = rng.integers(0, 8, n), rng.integers(0, 8, n), rng.normal(size=n)
    p = 1 / (1 + np.exp(-(-2.0 + 2.0 * (seg == cat) + 0.5 * x)))
    return pd.DataFrame({"x": x, "seg": seg.astype(str), "cat": cat.astype(str),
                         "label": (rng.random(n) < p).astype(int)})


def auc(y, p):
    """Rank AUC (no ties in the scores)."""
    r = np.argsort(np.argsort(p)) + 1
    pos = y == 1
    return (r[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())


def fit_models(out):
    out = Path(out)
    m, users, items, test = blocks()
    tt = TwoTower(dim=16, hidden=(32,), cat_dim=8, batch_size=128, epochs=6, patience=2,
                  val_fraction=0.1, user_ids=False, item_ids=False, history=False,
                  n_extra_negatives=32, seed=5).fit(m, users, items, progress=False)
    top = tt.recommend(np.arange(m.shape[0]), 10, exclude=m)[0]
    recall = float(np.mean([t in row for t, row in zip(test, top)]))
    rk = DLRMRanker(dense_features=["x"], sparse_features=["seg", "cat"], epochs=3,
                    batch_size=512, seed=5, patience=1)
    valid = clicks(2, 3000)
    rk.fit(clicks(1), valid_frame=valid, progress=False)
    auc_valid = float(auc(valid["label"].to_numpy(), rk.predict_proba(valid)))
    r = distributed.rank()
    torch.save({"tt": tt.net.state_dict(), "rk": rk.net.state_dict()}, out / f"weights-{r}.pt")
    result = {"val_loss": min(tt.val_history), "recall": recall, "auc": auc_valid,
              "world": distributed.world_size()}
    if distributed.is_main():
        (out / "result.json").write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO)
    with distributed.session():
        fit_models(sys.argv[2])
'''


def _ranks(log: str) -> set[tuple[int, int]]:
    return {(int(r), int(w)) for r, w in RANK_LINE.findall(log)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_ranks(script: Path, out: Path) -> str:
    """Run ``script`` as ranks 0 and 1 of a gloo group (torchrun's variables); their stderr."""
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
    env.update(MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(REPO), str(out)],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for r in (0, 1)
    ]
    logs = [p.communicate(timeout=120)[1] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    return "".join(logs)


def test_two_processes_reach_one_process_quality_with_synced_weights(tmp_path, monkeypatch):
    import torch

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    monkeypatch.syspath_prepend(str(REPO))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank (OMP_NUM_THREADS=1); two threads fight on 2 cores
    try:
        ref = runpy.run_path(str(script))["fit_models"](one)
    finally:
        torch.set_num_threads(threads)
    log = _two_ranks(script, two)
    assert _ranks(log) == {(0, 2), (1, 2)}
    got = json.loads((two / "result.json").read_text())
    assert ref["world"] == 1 and got["world"] == 2
    assert got["val_loss"] == pytest.approx(ref["val_loss"], rel=0.02)
    assert abs(got["recall"] - ref["recall"]) <= 0.05 and ref["recall"] > 0.3  # random: ~0.1
    assert abs(got["auc"] - ref["auc"]) <= 0.01 and ref["auc"] > 0.6  # random: 0.5
    # DDP averaged the gradients: both ranks hold the same weights
    w0, w1 = (torch.load(two / f"weights-{r}.pt") for r in (0, 1))
    for model in ("tt", "rk"):
        for name, value in w0[model].items():
            torch.testing.assert_close(value, w1[model][name], msg=f"{model}.{name}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two tiny simulated, validated days (the two-tower falls back to the raw attributes)."""
    from pipelines.core.settings import Settings
    from pipelines.data import simulate
    from pipelines.data.validate import validate_partition

    s = Settings.from_env({"RECLOOP_HOME": str(tmp_path_factory.mktemp("ddp-home"))})
    s.ensure_dirs()
    simulate.simulate(s, len(DAYS), "tiny", 3)
    for d in DAYS:
        validate_partition(s, d)
    return s


def test_dag_setting_trains_the_two_tower_in_2_processes_recommend_uses_it(
    tiny, monkeypatch, capfd
):
    from pipelines.orchestration import tasks
    from pipelines.retrieval.predict import recommend
    from pipelines.retrieval.train import load_artifact

    for name, value in tiny.as_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RECLOOP_TRAIN_NPROC", "2")
    summary = tasks.train_model(DAYS[1], "two_tower")  # `recloop train` under torchrun
    err = capfd.readouterr().err
    assert summary["model"] == "two_tower" and summary["trained_through"] == DAYS[1]
    assert _ranks(err) == {(0, 2), (1, 2)}
    losses = KEPT.findall(err)
    assert len(losses) == 2 and losses[0] == losses[1]  # both ranks kept the same epoch
    art = load_artifact(tiny, "two_tower", DAYS[1])  # rank 0 saved it, the normal format
    assert art.meta["version"] == f"two_tower-{DAYS[1]}"
    recs = recommend(tiny, "two_tower", 5, art.users.ids[:2], DAYS[1])
    assert len(recs) == 10 and set(recs["source"]) == {"model"}


def test_recloop_train_nproc_relaunches_under_torchrun(tmp_path, monkeypatch):
    from pipelines.cli import main
    from pipelines.core import distributed
    from pipelines.core.settings import Settings

    monkeypatch.setenv("RECLOOP_HOME", str(tmp_path))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    calls = []
    monkeypatch.setattr(distributed, "launch", lambda *a, **k: calls.append(a))
    assert main(["train", "--model", "ranker", "--date", DAYS[1], "--nproc", "3"]) == 0
    nproc, argv, env = calls[0]
    assert (nproc, argv) == (3, ["train", "--model", "ranker", "--date", DAYS[1]])
    assert env["RECLOOP_HOME"] == str(tmp_path)
    cmd = distributed.torchrun_command(3, argv)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3"]
    assert main(["train", "--model", "mf", "--date", DAYS[1], "--nproc", "2"]) == 2  # not DDP
    assert Settings.from_env({"RECLOOP_TRAIN_NPROC": "3"}).train_nproc == 3
    assert Settings.from_env({}).train_nproc == 1
    with pytest.raises(ValueError, match="RECLOOP_TRAIN_NPROC=0"):
        Settings.from_env({"RECLOOP_TRAIN_NPROC": "0"})
