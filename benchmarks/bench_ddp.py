"""Data-parallel training (issue 19): wall time and quality of the two-tower and the DLRM ranker
trained in 1 and in N DDP processes (``recloop train --model M --date D --nproc N``), and the
per-step communication cost of averaging their gradients.

    .venv/bin/python benchmarks/bench_ddp.py [--days 3] [--scale demo] [--nproc 1,2]
        [--models two_tower,ranker] [--home DIR]

1. A workspace (``--home``, default a temporary folder): ``--days`` simulated days at
   ``--scale``, validated, feature tables computed, the Feast repo applied (the ranker's
   point-in-time training frame). Models train through the second-to-last day.
2. Per model and process count (1 process with all cores' threads and with one thread; N
   processes with one thread each, as torchrun sets): the wall time of the whole command (process start, data load,
   training, save), the fit time it reports (rank 0), and quality — two-tower: forward NDCG@10 /
   recall@100 on the last day (``evaluate_forward``) and the best held-out full-softmax loss from
   its log; ranker: validation-day AUC and logloss of the DLRM (``train_for_date``'s record).
3. Communication: under torchrun with N processes, the mean time of one gloo all-reduce of a
   float32 gradient the size of each trained model (``--probe``), i.e. what DDP adds per step
   (buckets overlap it with backward on real hardware; on this box they share the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
KEPT = re.compile(r"keeping epoch (\d+) \(validation loss ([0-9.]+)\)")
STEPS = re.compile(r"two_tower epoch (\d+)/")


def build_workspace(home: Path, days: int, scale: str) -> tuple[Any, list[str]]:
    """Simulate, validate and compute features for ``days`` days; apply the Feast repo."""
    from pipelines.core import schema
    from pipelines.core.settings import Settings
    from pipelines.data import simulate
    from pipelines.data.validate import validate_partition
    from pipelines.features.store import apply_repo
    from pipelines.features.tables import compute_features

    s = Settings.from_env({**os.environ, "RECLOOP_HOME": str(home), "RECLOOP_SCALE": scale})
    s.ensure_dirs()
    dates = [d.isoformat() for d in schema.partition_dates(s.validated_dir)]
    if len(dates) < days:
        t0 = time.perf_counter()
        simulate.simulate(s, days, scale)
        for d in sorted(p.isoformat() for p in schema.partition_dates(s.interactions_dir)):
            validate_partition(s, d)
            compute_features(s, d)
        apply_repo(s)
        print(f"workspace: {days} {scale} days in {time.perf_counter() - t0:.0f}s", flush=True)
        dates = [d.isoformat() for d in schema.partition_dates(s.validated_dir)]
    return s, dates


def train_once(settings: Any, model: str, date: str, nproc: int, threads: int) -> dict[str, Any]:
    """``recloop train --model M --date D --nproc N`` with ``threads`` torch threads per process
    (0: torch's default, all cores; torchrun sets 1 when N > 1): wall seconds, summary, log
    figures."""
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--model", model, "--date", date]
    env = {**os.environ, **settings.as_env()}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*cmd, "--nproc", str(nproc)], cwd=REPO, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} --nproc {nproc} failed:\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = {"model": model, "nproc": nproc, "threads": threads or "all"}
    out["wall_s"] = round(wall, 1)
    summary = json.loads(proc.stdout)
    if model == "two_tower":
        from pipelines.retrieval.evaluate import evaluate_forward

        out["fit_s"] = summary["fit_seconds"]
        kept = KEPT.findall(proc.stderr)
        out["epochs"] = max(int(e) for e in STEPS.findall(proc.stderr))
        out["best_epoch"], out["val_loss"] = int(kept[-1][0]), float(kept[-1][1])
        day = (settings_day(date, 1)).isoformat()
        m = evaluate_forward(settings, day, models=("two_tower",))["metrics"]["two_tower"]
        out["ndcg@10"], out["recall@100"] = m["ndcg@10"], m["recall@100"]
    else:
        v = summary["validation"]["ranker"]
        out["auc"], out["logloss"] = v["auc"], v["logloss"]
        out["rows"] = summary["rows"]
        rate = re.findall(r"ranker \(dot\) trained on (\d+) rows in ([0-9.]+)s", proc.stderr)
        out["fit_s"] = float(rate[0][1]) if rate else None
        meta = json.loads((Path(summary_dir(settings, date)) / "meta.json").read_text())
        epochs = meta["validation"].get("epochs_run", 0)
        train_rows = summary["rows"] - summary["validation_rows"]
        out["epochs"] = epochs
        if out["fit_s"]:  # examples one process trained on per second (its shard)
            out["examples_per_s_per_process"] = round(train_rows * epochs / nproc / out["fit_s"])
    return out


def summary_dir(settings: Any, date: str) -> Path:
    from pipelines.core import layout

    return layout.model_dir(settings, "ranker", date)


def settings_day(date: str, plus: int) -> Any:
    import datetime as dt

    return dt.date.fromisoformat(date) + dt.timedelta(days=plus)


def param_counts(settings: Any, date: str, models: list[str]) -> dict[str, int]:
    """The gradient floats DDP all-reduces per step for each model's saved artifact (its
    parameters less the two-tower's id tables it never reads)."""
    from pipelines.ranking.predict import load_ranker
    from pipelines.retrieval.train import load_artifact

    out = {}
    for name in models:
        skip: set[str] = set()
        if name == "two_tower":
            model = load_artifact(settings, name, date).model
            net, hp = model.net, model.hp
            if not hp["user_ids"]:  # id tables the towers never read: not all-reduced
                skip.add("user.ids.weight")
            if not hp["item_ids"] and not hp["history"]:
                skip.add("item.ids.weight")
        else:
            net = load_ranker(settings, "ranker", date).net
        params = dict(net.named_parameters())
        total = int(sum(p.numel() for p in params.values()))
        synced = int(sum(p.numel() for n, p in params.items() if n not in skip))
        print(f"{name}: {total} parameters, {synced} all-reduced per step", flush=True)
        out[name] = synced
    return out


def probe(sizes: dict[str, int], iters: int = 50) -> None:
    """Under torchrun: time one all-reduce of a float32 tensor per size; rank 0 prints JSON."""
    import torch

    from pipelines.core import distributed

    with distributed.session() as world:
        result = {"world": world}
        for name, n in sizes.items():
            t = torch.zeros(n)
            for _ in range(5):
                torch.distributed.all_reduce(t)
            t0 = time.perf_counter()
            for _ in range(iters):
                torch.distributed.all_reduce(t)
            ms = (time.perf_counter() - t0) / iters * 1e3
            result[name] = {"params": n, "allreduce_ms": round(distributed.mean(ms), 3)}
        if distributed.is_main():
            print(json.dumps(result))


def run_probe(nproc: int, sizes: dict[str, int]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", __file__, "--probe", json.dumps(sizes)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--scale", default="demo")
    ap.add_argument("--nproc", default="1,2")
    ap.add_argument("--models", default="two_tower,ranker")
    ap.add_argument("--home", type=Path)
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        probe(json.loads(args.probe))
        return
    home = args.home or Path(tempfile.mkdtemp(prefix="bench-ddp-"))
    settings, dates = build_workspace(home, args.days, args.scale)
    date = dates[-2]
    models = args.models.split(",")
    rows = []
    configs = [(n, 0 if n == 1 else 1) for n in (int(x) for x in args.nproc.split(","))]
    if 1 in (n for n, _ in configs):
        configs.insert(1, (1, 1))  # one process on one thread: the per-process baseline
    for model in models:
        for n, threads in configs:
            row = train_once(settings, model, date, n, threads)
            print(json.dumps(row), flush=True)
            rows.append(row)
    sizes = param_counts(settings, date, models)
    for n in (int(x) for x in args.nproc.split(",") if int(x) > 1):
        print(json.dumps({"probe": run_probe(n, sizes)}), flush=True)
    print(f"cpus: {os.cpu_count()}, torch threads per process: 1 under torchrun (N > 1)")


if __name__ == "__main__":
    main()
