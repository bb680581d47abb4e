"""Stop a child started in its own session (``start_new_session=True``) and everything under it.

``airflow standalone`` stops its components (scheduler, DAG processor, triggerer, API server,
their log servers and executor workers) only on SIGINT, and only when SIGINT reaches it alone (it
then terminates each component, which shuts its children down): SIGTERM kills it alone and
leaves them running, and SIGINT to the whole group (Ctrl-C in its terminal) hangs the scheduler
behind its interrupted executor workers. Task processes move to process groups of their own but stay in the session, so the
session id (the child's pid) finds every descendant that did not ``setsid`` itself. Linux only
(``/proc``).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from pipelines.core.wait import wait_until

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
"""What :func:`stop_session` sends, in order: SIGINT to the leader alone, then SIGTERM and SIGKILL
to every live process of the session."""


def session_pids(sid: int) -> list[int]:
    """Pids of the live (not zombie) processes whose session id is ``sid``, from ``/proc``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            pids.append(int(stat.parent.name))
    return pids


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_empty(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Reap ``proc`` and wait until its session has no live process; True when it emptied."""

    def emptied() -> bool:
        proc.poll()
        return not session_pids(proc.pid)

    try:
        return wait_until(emptied, timeout_s, f"session {proc.pid} to end", interval_s=0.2)
    except TimeoutError:
        return False


def stop_session(proc: subprocess.Popen, grace_s: float = 30.0) -> list[signal.Signals]:
    """Stop ``proc`` (a session leader) and every live process of its session.

    SIGINT to ``proc`` alone first, waiting up to ``grace_s`` seconds for the session to
    empty; then SIGTERM to each live process of the session (``grace_s`` again); then SIGKILL
    (5 s). Returns the signals it had to send (``[]``: nothing was running).
    """
    sent: list[signal.Signals] = []
    for sig, wait_s in zip(STOP_SIGNALS, (grace_s, grace_s, 5.0), strict=True):
        proc.poll()
        live = session_pids(proc.pid)
        if not live:
            break
        if sig == signal.SIGINT:
            if proc.returncode is not None:  # the leader is gone; the rest get SIGTERM
                continue
            proc.send_signal(sig)
        else:
            _signal(live, sig)
        sent.append(sig)
        if _wait_empty(proc, wait_s):
            break
    return sent
