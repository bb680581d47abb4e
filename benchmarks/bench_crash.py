"""Crash injection (issue 17): SIGKILL the daily job and ``ingest-served`` at seeded random times,
rerun, and compare with an undisturbed run.

On a ``tiny`` simulated workspace (``recloop simulate --scale tiny --days 2`` in a temporary
RECLOOP_HOME, its own ``redis-server`` on a free port) the daily job of the first day is run
once: that is the pre-run state. Then the daily job of the second day (the inline runner's task
functions, ``pipelines.loop.closed_loop._run_inline``: the daily DAG's tasks in its order, then
the A/B analysis) runs in a child process that marks each task as it starts (``.times``: the
task and the clock):

1. undisturbed (the reference), once more undisturbed (the control: what the comparison would
   call a difference when nothing happened; it must be none) and twice in a row (the rerun: a
   finished day run again must change nothing);
2. per trial (seeded): a fresh copy of the pre-run workspace (same path) and of Redis's keys,
   the job started and SIGKILLed (its whole process group) at a seeded uniform point of the
   reference's task timeline (imports aside): the point's task and offset into it are drawn,
   the kill comes that offset after the child marks that task (so the kill lands inside the
   job's work however fast this run is); rerun to completion, compared with the reference.

The same for ``recloop ingest-served --date D`` (the CLI's ``main`` in a child process) over a
served log written the way the service writes it (``serving.logging.ImpressionLog``: impressions
of requests, clicks of some of them and one click that matches no impression), merged into day
D's simulated partition. That command spends most of its second importing, so a uniform kill
time would land before it writes anything: its kills target the writing window instead. The
child marks each phase (``read``: reading and matching the logs, then ``write(<root>)`` before
each partition it writes, ``done``); its trials draw their points in the reference's window
from the first ``write`` mark to the end.

What is compared (the fingerprint of a finished workspace): every parquet file under ``data/``,
``quarantine/``, ``features/`` and ``serving/`` as the hash of its sorted rows (wall-clock
columns such as ``created`` aside); every file under ``artifacts/`` by hash (a JSON file's
wall-clock keys aside); the JSON reports under ``reports/{eval,gates,ranker,stats,validation,
ope}``; every registered model version in MLflow (version number, lineage tags with the
``artifact_hash`` content hashes, source with its run id masked; run ids and ``*_at`` timestamps
aside) and the aliases; every key of the online store in Redis (hash fields and values).

    .venv/bin/python benchmarks/bench_crash.py [--trials 10] [--seed 0] [--no-served] [--loose]
        [--keep DIR] [--redis-port PORT]

Prints one table per job: trial, kill time, the phase (task) killed in, identical yes/no with
the first differing entry. Exit code 1 when a trial is not identical. One process at a time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DAY1, DAY2 = "2026-01-01", "2026-01-02"
WALLCLOCK_COLUMNS = ("created",)
"""Feature-table columns stamped with the wall clock at computation (not compared)."""
WALLCLOCK_KEYS = ("created", "timestamp", "seconds")
"""JSON keys (and any key ending in ``_at``, ``_seconds`` or ``_s``) holding wall-clock stamps or
durations (not compared)."""
WALLCLOCK_SUFFIXES = ("_at", "_seconds", "_s", "run_id")
VOLATILE_TAGS = ("artifact_hash", "built_from_hash")
"""Registry tags ``--loose`` leaves out: content hashes of artifact folders. They are compared
by default: ``pipelines.release.registry.hash_folder`` leaves JSON wall-clock keys aside (an
index's ``created_at``/``*_seconds``, a training curve's ``examples_per_s``), so two undisturbed
runs register the same hashes. (``--loose``: for code whose hashes still cover those keys; the
artifact files themselves are compared anyway, wall-clock keys aside.)"""
REPORT_DIRS = ("eval", "gates", "ranker", "stats", "validation", "ope")
PARQUET_ROOTS = ("data", "quarantine", "features", "serving")


# --- the child: the daily job with phase markers ---------------------------------------------------
def child_daily(ds: str, phase_file: Path) -> None:
    """Run the daily job of ``ds`` as the inline runner does, writing the running task's name to
    ``phase_file`` before each task (so the parent knows where its SIGKILL landed)."""
    import datetime as dt

    from pipelines.core.settings import Settings
    from pipelines.experiments import ab
    from pipelines.loop import closed_loop
    from pipelines.orchestration import tasks

    mark = _marker(phase_file)

    def marked(fn: Any, name: str) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            extra = f"({args[1]})" if len(args) > 1 and isinstance(args[1], str) else ""
            mark(name + extra)
            return fn(*args, **kwargs)

        return run

    for name in {n for n, _ in closed_loop.DAILY_TASKS}:
        setattr(tasks, name, marked(getattr(tasks, name), name))
    ab.analyze_current = marked(ab.analyze_current, "ab_analyze")
    settings = Settings.from_env()
    settings.ensure_dirs()
    closed_loop._run_inline(
        settings, dt.date.fromisoformat(ds), closed_loop.LoopConfig(runner="inline")
    )
    mark("done")


def _marker(phase_file: Path) -> Any:
    """``mark(name)``: write ``name`` to ``phase_file`` and append ``name<TAB>epoch seconds`` to
    its ``.times`` neighbour (the parent reads the phases' durations there)."""
    times = phase_file.with_suffix(".times")

    def mark(name: str) -> None:
        phase_file.write_text(name)
        with times.open("a") as out:
            out.write(f"{name}\t{time.time():.6f}\n")

    return mark


def child_served(ds: str, phase_file: Path) -> int:
    """``recloop ingest-served --date ds`` (the CLI's ``main``) with phase marks: ``read`` when
    the ingest starts, ``write(<root folder>)`` before each partition it writes, ``done``."""
    from pipelines import cli
    from pipelines.core import schema
    from pipelines.loop import served

    mark = _marker(phase_file)
    ingest, write = served.ingest_served, schema.write_partition_atomic

    def marked_ingest(*args: Any, **kwargs: Any) -> Any:
        mark("read")
        return ingest(*args, **kwargs)

    def marked_write(table: Any, root: Path, *args: Any, **kwargs: Any) -> Any:
        mark(f"write({Path(root).name})")
        return write(table, root, *args, **kwargs)

    served.ingest_served = marked_ingest
    schema.write_partition_atomic = marked_write
    code = cli.main(["ingest-served", "--date", ds])
    mark("done")
    return code


# --- workspace and Redis snapshots -----------------------------------------------------------------
def redis_snapshot(url: str) -> list[tuple[bytes, bytes]]:
    """Every key of the Redis database at ``url`` with its ``DUMP`` (no key here has a TTL)."""
    import redis

    client = redis.Redis.from_url(url)
    return [(k, client.dump(k)) for k in sorted(client.scan_iter(count=1000))]


def redis_restore(url: str, snapshot: list[tuple[bytes, bytes]]) -> None:
    """Empty the database at ``url`` and put ``snapshot``'s keys back."""
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    for key, dump in snapshot:
        client.restore(key, 0, dump, replace=True)


def reset(pre: Path, home: Path, url: str, snap: list[tuple[bytes, bytes]]) -> None:
    """``home`` (always the same path: artifacts and MLflow hold absolute paths) := a fresh copy
    of the pre-run workspace ``pre``; Redis := its pre-run keys."""
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(pre, home, symlinks=True)
    redis_restore(url, snap)


# --- fingerprints -----------------------------------------------------------------------------------
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def parquet_digest(path: Path) -> str:
    """Hash of the file's rows, sorted, wall-clock columns aside (``rows=N:hash``); a file that
    cannot be read (half written): ``unreadable:<hash of its bytes>``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        frame = pq.read_table(path).to_pandas()
    except (OSError, pa.ArrowException):
        return "unreadable:" + _sha(path.read_bytes())
    frame = frame.drop(columns=[c for c in WALLCLOCK_COLUMNS if c in frame.columns])
    text = frame.astype(str)
    cols = sorted(text.columns)
    text = text[cols].sort_values(cols).reset_index(drop=True) if cols else text
    return f"rows={len(frame)}:" + _sha(text.to_csv(index=False).encode())


def _strip_wallclock(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_wallclock(v) for k, v in obj.items()
                if k not in WALLCLOCK_KEYS and not str(k).endswith(WALLCLOCK_SUFFIXES)}  # fmt: skip
    if isinstance(obj, list):
        return [_strip_wallclock(v) for v in obj]
    return obj


def file_digest(path: Path) -> str:
    """A JSON file: hash of its canonical form, wall-clock keys aside; anything else: its bytes."""
    if path.suffix == ".json":
        try:
            obj = json.loads(path.read_text())
        except ValueError:
            return "bad-json:" + _sha(path.read_bytes())
        return _sha(json.dumps(_strip_wallclock(obj), sort_keys=True).encode())
    if path.suffix == ".parquet":
        return parquet_digest(path)
    return _sha(path.read_bytes())


def files_fingerprint(home: Path) -> dict[str, str]:
    """``{relative path: digest}`` of the workspace's data, features, artifacts and reports."""
    out: dict[str, str] = {}
    for root in PARQUET_ROOTS:
        for path in sorted((home / root).rglob("*.parquet")):
            out[str(path.relative_to(home))] = parquet_digest(path)
    for path in sorted((home / "artifacts").rglob("*")):
        if path.is_file():
            out[str(path.relative_to(home))] = file_digest(path)
    for sub in REPORT_DIRS:
        for path in sorted((home / "reports" / sub).rglob("*.json")):
            out[str(path.relative_to(home))] = file_digest(path)
    for root in ("data", "quarantine", "features", "serving", "artifacts"):
        for path in sorted((home / root).rglob("*")):  # leftovers (.tmp files, half folders)
            rel = str(path.relative_to(home))
            if path.is_file() and rel not in out and path.name != "registry.db":
                out[rel] = "file:" + _sha(path.read_bytes())
    return out


def registry_fingerprint(home: Path, skip_tags: tuple[str, ...] = VOLATILE_TAGS) -> dict[str, str]:
    """``{mlflow:<model>/v<N>: lineage}`` and ``{mlflow:<model>/aliases: ...}``: tags minus
    wall-clock stamps, source with its run id masked."""
    db = home / "mlflow" / "mlflow.db"
    if not db.exists():
        return {}
    code = f"""
import json, re
from mlflow.tracking import MlflowClient
c = MlflowClient(tracking_uri={f"sqlite:///{db}"!r}, registry_uri={f"sqlite:///{db}"!r})
out = {{}}
for rm in c.search_registered_models():
    out[f"mlflow:{{rm.name}}/aliases"] = json.dumps(dict(sorted(rm.aliases.items())))
    for v in c.search_model_versions(f"name='{{rm.name}}'"):
        tags = {{k: t for k, t in sorted(v.tags.items()) if not k.endswith("_at") and k not in {list(skip_tags)!r}}}
        src = re.sub(r"/[0-9a-f]{{32}}/", "/<run>/", v.source or "")
        out[f"mlflow:{{rm.name}}/v{{v.version}}"] = json.dumps([src, tags, v.status])
print("FP" + json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, check=True)  # fmt: skip
    line = next(x for x in proc.stdout.splitlines() if x.startswith("FP"))
    return json.loads(line[2:])


def redis_fingerprint(url: str) -> dict[str, str]:
    """``{redis:<key hex>: hash of its fields and values}`` of the online store."""
    import redis

    client = redis.Redis.from_url(url)
    out: dict[str, str] = {}
    for key in sorted(client.scan_iter(count=1000)):
        kind = client.type(key)
        if kind == b"hash":
            body = b"|".join(k + b"=" + v for k, v in sorted(client.hgetall(key).items()))
        else:
            body = kind + b":" + (client.dump(key) or b"")
        out["redis:" + key.hex()[:48]] = _sha(body)
    return out


LOOSE = False
"""``--loose``: leave the registry tags ``VOLATILE_TAGS`` out of the comparison."""


def fingerprint(home: Path, url: str, registry: bool = True) -> dict[str, str]:
    """Everything compared between a finished run and the reference."""
    out = files_fingerprint(home)
    if registry:
        out.update(registry_fingerprint(home, VOLATILE_TAGS if LOOSE else ()))
    out.update(redis_fingerprint(url))
    return out


def compare(ref: dict[str, str], got: dict[str, str], dump: Path | None = None) -> tuple[bool, str]:
    """``(identical, first difference)``: a key missing, extra or with another digest; every
    difference is written to ``dump`` when given."""
    diffs = sorted(k for k in set(ref) | set(got) if ref.get(k) != got.get(k))
    if dump is not None:
        dump.write_text("".join(f"{k}: {ref.get(k)} vs {got.get(k)}\n" for k in diffs))
    if not diffs:
        return True, ""
    k = diffs[0]
    more = f" (+{len(diffs) - 1} more)" if len(diffs) > 1 else ""
    return False, f"{k}: {ref.get(k, 'missing')} vs {got.get(k, 'missing')}{more}"


# --- jobs -------------------------------------------------------------------------------------------
def job_command(job: str, phase_file: Path) -> list[str]:
    """The command line of ``job`` (``daily`` or ``ingest-served``) for day DAY2."""
    flag = "--child" if job == "daily" else "--child-served"
    return [sys.executable, str(Path(__file__).resolve()), flag, DAY2, str(phase_file)]


def _wait_for_phase(proc: subprocess.Popen, phase_file: Path, phase: str) -> bool:
    """Poll (every 1 ms) until ``phase_file`` reads ``phase``; False if ``proc`` ended first."""
    while proc.poll() is None:
        try:
            if phase_file.read_text() == phase:
                return True
        except OSError:
            pass
        time.sleep(0.001)
    return False


def run_job(
    cmd: list[str],
    env: dict[str, str],
    log: Path,
    kill_at: float | None,
    after: tuple[Path, str] | None = None,
) -> tuple[float, int]:
    """Run ``cmd`` (its own process group); SIGKILL the group ``kill_at`` seconds after its
    start, or, with ``after=(phase_file, phase)``, ``kill_at`` seconds after the child marked
    ``phase``. ``(seconds from the start to the end or the kill, return code)``; raises when an
    unkilled run fails."""
    t0 = time.perf_counter()
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            if after is None or _wait_for_phase(proc, *after):
                proc.wait(timeout=kill_at)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        seconds = time.perf_counter() - t0
        proc.wait()
    if kill_at is None and proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}); see {log}")
    return seconds, proc.returncode


def phase_window(times_file: Path, first_prefix: str = "") -> list[tuple[str, float]]:
    """``[(phase, seconds)]`` of a finished run's phases from its first mark starting with
    ``first_prefix`` to ``done`` (the ``.times`` file of :func:`_marker`)."""
    marks = [line.split("\t") for line in times_file.read_text().splitlines()]
    marks = [(name, float(t)) for name, t in marks]
    first = next(i for i, (name, _) in enumerate(marks) if name.startswith(first_prefix))
    return [(marks[i][0], marks[i + 1][1] - marks[i][1]) for i in range(first, len(marks) - 1)]


def draw_in_window(window: list[tuple[str, float]], u: float) -> tuple[str, float]:
    """The point at share ``u`` (0..1) of the window's total time: ``(phase, seconds into it)``."""
    at = u * sum(s for _, s in window)
    for phase, seconds in window:
        if at < seconds:
            return phase, at
        at -= seconds
    return window[-1][0], window[-1][1]


def write_served_log(home: Path, n_requests: int = 200, seed: int = 7) -> None:
    """A served log of DAY2 as the service writes it: ``n_requests`` slates of 10 of the world's
    users and items, a click on ~3% of the impressions (two flushes: two files) and one click
    that matches no impression (quarantined by the ingest)."""
    import pandas as pd

    from serving.logging import ImpressionLog, feedback_row, impression_rows, impressions_dir

    rng = np.random.default_rng(seed)
    users = pd.read_parquet(home / "data" / "users.parquet")["user_id"].astype(str).to_numpy()
    items = pd.read_parquet(home / "data" / "items.parquet")["item_id"].astype(str).to_numpy()
    log = ImpressionLog(impressions_dir(home))
    day0 = pd.Timestamp(DAY2, tz="UTC")
    for r in range(n_requests):
        ts = day0 + pd.Timedelta(seconds=int(30 + r * 400))
        slate = [str(i) for i in rng.choice(items, 10, replace=False)]
        props = [0.1] * 10
        rows = impression_rows(f"req{r}", ts, str(rng.choice(users)), slate, props, "champion",
                               "bundle-1")  # fmt: skip
        log.add(rows)
        shown = {"request_id": f"req{r}", "user_id": rows[0]["user_id"], "items": slate,
                 "arm": "champion", "model_version": "bundle-1", "propensities": props}  # fmt: skip
        for item in slate:
            if rng.random() < 0.03:
                log.add([feedback_row(shown, item, "click", 1.0, ts + pd.Timedelta(seconds=5), 0)])
        if r == n_requests // 2:
            log.flush()
    ghost = {"request_id": "ghost", "user_id": str(users[0]), "items": [str(items[0])],
             "arm": "champion", "model_version": "bundle-1", "propensities": [0.1]}  # fmt: skip
    log.add([feedback_row(ghost, str(items[0]), "click", 1.0, day0 + pd.Timedelta(hours=3), 0)])
    log.flush()


# --- the benchmark ----------------------------------------------------------------------------------
def crash_trials(job: str, ctx: dict[str, Any], trials: int, seed: int) -> list[dict[str, Any]]:
    """The reference, the control and ``trials`` kill-and-rerun trials of ``job``; one row each."""
    home, url, env = ctx["home"], ctx["url"], ctx["env"]
    pre, snap, root = ctx["pre"], ctx["snap"], ctx["root"]
    phase_file, log = root / f"phase-{job}.txt", root / f"{job}.log"
    cmd = job_command(job, phase_file)
    registry = job == "daily"
    times = phase_file.with_suffix(".times")
    reset(pre, home, url, snap)
    times.unlink(missing_ok=True)
    ref_s, _ = run_job(cmd, env, log, None)
    ref = fingerprint(home, url, registry)
    window = phase_window(times, "" if job == "daily" else "write(")
    span = f"{sum(s for _, s in window):.2f} s in {len(window)} phases"
    rows = [{"trial": "reference", "kill_s": None, "phase": f"{ref_s:.1f} s ({span})",
             "identical": True, "diff": f"{len(ref)} entries"}]  # fmt: skip
    for name, runs in (("control", 1), ("rerun", 2)):  # undisturbed; a finished day run again
        reset(pre, home, url, snap)
        for _ in range(runs):
            run_job(cmd, env, log, None)
        same, diff = compare(ref, fingerprint(home, url, registry), root / f"diff-{job}-{name}.txt")
        rows.append({"trial": name, "kill_s": None, "identical": same, "diff": diff,
                     "phase": "undisturbed" if runs == 1 else "finished, run again"})  # fmt: skip
    rng = np.random.default_rng(seed)
    for trial in range(trials):
        reset(pre, home, url, snap)
        phase_file.unlink(missing_ok=True)
        # a point of the reference's phase window; the kill comes that long after its mark
        target, offset = draw_in_window(window, float(rng.uniform(0.0, 1.0)))
        kill_at, code = run_job(cmd, env, log, offset, after=(phase_file, target))
        phase = phase_file.read_text() if phase_file.exists() else "startup"
        at = f"{offset * 1e3:.1f} ms" if offset < 1 else f"{offset:.2f} s"
        phase = "finished before the kill" if code == 0 else f"{phase} +{at}"
        run_job(cmd, env, log, None)
        same, diff = compare(
            ref, fingerprint(home, url, registry), root / f"diff-{job}-{trial}.txt"
        )
        rows.append({"trial": str(trial), "kill_s": kill_at, "phase": phase, "identical": same,
                     "diff": diff})  # fmt: skip
        print(
            f"  {job} trial {trial}: kill at {kill_at:.2f} s in {phase}: "
            f"{'identical' if same else 'DIFFERENT ' + diff}",
            flush=True,
        )
    return rows


def print_table(job: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{job}: SIGKILL at a seeded random time, rerun, compare with the undisturbed run")
    print(
        f"{'trial':>9}  {'kill s':>6}  {'phase killed in':<34}  {'identical':<9}  first difference"
    )
    for r in rows:
        kill = "-" if r["kill_s"] is None else f"{r['kill_s']:.2f}"
        same = "yes" if r["identical"] else "NO"
        print(f"{r['trial']:>9}  {kill:>6}  {r['phase']:<34}  {same:<9}  {r['diff']}")
    trials = [r for r in rows if r["kill_s"] is not None]
    print(f"{job}: {sum(r['identical'] for r in trials)}/{len(trials)} trials identical")


def setup(root: Path, url: str, scale: str) -> dict[str, Any]:
    """Simulate 2 days, run the daily job of DAY1: the pre-run workspace (``root/pre``) and
    Redis keys; returns the context the trials share."""
    home = root / "home"
    env = {**os.environ, "RECLOOP_HOME": str(home), "RECLOOP_REDIS_URL": url,
           "RECLOOP_SCALE": scale, "PYTHONPATH": str(REPO)}  # fmt: skip
    env.pop("RECLOOP_MLFLOW_URI", None)
    log = root / "setup.log"
    run_job([sys.executable, "-m", "pipelines.cli", "simulate", "--scale", scale, "--days", "2"],
            env, log, None)  # fmt: skip
    run_job([sys.executable, str(Path(__file__).resolve()), "--child", DAY1,
             str(root / "phase-setup.txt")], env, log, None)  # fmt: skip
    shutil.copytree(home, root / "pre", symlinks=True)
    return {"root": root, "home": home, "url": url, "env": env, "pre": root / "pre",
            "snap": redis_snapshot(url)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", default="tiny")
    parser.add_argument("--no-served", action="store_true", help="skip the ingest-served part")
    parser.add_argument("--loose", action="store_true", help="leave artifact hash tags out")
    parser.add_argument("--keep", type=Path, help="work here (kept) instead of a temp folder")
    parser.add_argument("--redis-port", type=int, help="the redis-server's port (default: free)")
    parser.add_argument("--child", nargs=2, metavar=("DATE", "PHASE_FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--child-served", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_daily(args.child[0], Path(args.child[1]))
        return 0
    if args.child_served:
        return child_served(args.child_served[0], Path(args.child_served[1]))
    from pipelines.core.redis_server import RedisServer

    global LOOSE
    LOOSE = args.loose

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-crash-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with RedisServer(root, args.redis_port) as server:
        ctx = setup(root, server.url, args.scale)
        print(
            f"workspace {root} (scale {args.scale}), redis {server.url}; "
            f"setup {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        results = {"daily": crash_trials("daily", ctx, args.trials, args.seed)}
        if not args.no_served:
            write_served_log(ctx["pre"])
            results["ingest-served"] = crash_trials("ingest-served", ctx, args.trials, args.seed)
    for job, rows in results.items():
        print_table(job, rows)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    ok = all(r["identical"] for rows in results.values() for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
