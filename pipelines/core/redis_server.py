"""A real ``redis-server`` on a loopback port, started from Python (tests, benchmarks).

Started the way ``infra/redis.sh`` starts the workspace's server (the shell entry point):
bound to 127.0.0.1, no persistence (``--save "" --appendonly no``), its files in ``workdir``;
in the foreground, as a child process, so that stopping it is this object's job.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import TracebackType

from pipelines.core.net import free_port, port_open
from pipelines.core.wait import wait_until


class RedisServer:
    """A ``redis-server`` child process on ``127.0.0.1:port`` (default: a free port).

    ``start()`` returns once the port accepts connections; ``stop()`` terminates it. Also a
    context manager (start on enter, stop on exit). ``proc`` is the process while it runs."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """The ``redis-server`` command line (raises ``RuntimeError`` when it is not installed)."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed: run `bash infra/setup.sh`")
        return [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir)]  # fmt: skip

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait (up to ``timeout_s`` seconds) until it accepts connections;
        ``RuntimeError`` when it does not."""
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_until(lambda: port_open(self.port), timeout_s, f"redis-server on port {self.port}",
                       interval_s=0.05)  # fmt: skip
        except TimeoutError as exc:
            self.stop()
            raise RuntimeError(f"redis-server did not start on port {self.port}") from exc

    def stop(self) -> None:
        """Terminate the server (waits up to 10 s); nothing when it is not running."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
