"""infra/setup.sh on a machine without redis-server, shellcheck, PostgreSQL (its
``pg_ctlcluster``), haproxy or Java (``openjdk-17-jre-headless``): the exact apt-get commands.

The real script runs from a copy of the repository's ``infra/`` in a temporary tree whose
``.venv`` stamp already matches (so nothing is pip-installed), with a PATH holding only the
coreutils it needs and fakes of ``id``, ``sudo`` and ``apt-get`` that record their calls; the fake
``apt-get install`` puts a stub of each package's command on that PATH, as dpkg would.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

# runs the real infra/setup.sh in a subprocess (bash + coreutils; under a second, no network)
pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("dirname", "cat", "sha256sum", "cut", "env", "chmod")
FAKES = {
    "id": '#!/bin/bash\n[ "$1" = -u ] && echo "$FAKE_UID"\n',
    "sudo": '#!/bin/bash\necho "sudo $*" >> "$CALLS"\nexec "$@"\n',
    "apt-get": (
        "#!/bin/bash\n"
        'echo "apt-get $* DEBIAN_FRONTEND=${DEBIAN_FRONTEND:-}" >> "$CALLS"\n'
        '[ "$1" = install ] || exit 0\n'
        'for pkg in "${@:4}"; do\n'
        '  printf \'#!/bin/bash\\necho "Redis server v=7.0.15 sha=0"\\n\' > "$FAKE_BIN/$pkg"\n'
        '  chmod +x "$FAKE_BIN/$pkg"\n'
        "done\n"
    ),
}


def _tree(tmp_path: Path, present: tuple[str, ...]) -> tuple[Path, Path]:
    """A repository copy (infra/setup.sh, a stamped .venv) and a bin dir; ``present`` commands
    are stubs there from the start. Returns (repo, bin)."""
    repo, bin_dir = tmp_path / "repo", tmp_path / "bin"
    (repo / "infra").mkdir(parents=True)
    (repo / ".venv" / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    shutil.copy(REPO / "infra" / "setup.sh", repo / "infra" / "setup.sh")
    (repo / "requirements.lock").write_text("pinned==1\n")
    (repo / "pyproject.toml").write_text("[project]\n")
    python = repo / ".venv" / "bin" / "python"
    python.write_text("#!/bin/bash\nexit 1\n")
    python.chmod(0o755)
    want = hashlib.sha256(b"pinned==1\n[project]\n").hexdigest()
    (repo / ".venv" / ".recloop-lock.sha").write_text(want + "\n")
    for tool in TOOLS:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for name, body in FAKES.items():
        (bin_dir / name).write_text(body)
    for name in present:
        (bin_dir / name).write_text('#!/bin/bash\necho "Redis server v=7.0.15 sha=0"\n')
    for f in bin_dir.iterdir():
        if not f.is_symlink():
            f.chmod(0o755)
    return repo, bin_dir


def _setup(tmp_path: Path, uid: int, present: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """Run the copied setup.sh as user ``uid``; (its stdout, the recorded calls in order)."""
    repo, bin_dir = _tree(tmp_path, present)
    calls = tmp_path / "calls.log"
    env = {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "CALLS": str(calls),
        "FAKE_BIN": str(bin_dir),
        "FAKE_UID": str(uid),
    }
    proc = subprocess.run(
        ["/bin/bash", str(repo / "infra" / "setup.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "installing pinned packages" not in proc.stdout  # the stamp matched: no pip
    return proc.stdout, calls.read_text().splitlines() if calls.exists() else []


def test_as_root_installs_both_packages_with_one_apt_get_install(tmp_path):
    out, calls = _setup(tmp_path, uid=0)
    assert calls == [
        "apt-get update -qq DEBIAN_FRONTEND=",
        "apt-get install -y -qq redis-server shellcheck postgresql haproxy "
        "openjdk-17-jre-headless DEBIAN_FRONTEND=noninteractive",
    ]
    assert (
        "setup: installing redis-server shellcheck postgresql haproxy openjdk-17-jre-headless "
        "(apt-get)" in out
    )
    assert "setup: ready (.venv/bin/recloop, v=7.0.15)" in out


def test_as_a_user_goes_through_sudo(tmp_path):
    present = ("shellcheck", "pg_ctlcluster", "haproxy", "java")
    _, calls = _setup(tmp_path, uid=1000, present=present)
    assert calls == [
        "sudo apt-get update -qq",
        "apt-get update -qq DEBIAN_FRONTEND=",
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server",
        "apt-get install -y -qq redis-server DEBIAN_FRONTEND=noninteractive",
    ]


def test_nothing_missing_calls_no_apt_get(tmp_path):
    present = ("redis-server", "shellcheck", "pg_ctlcluster", "haproxy", "java")
    out, calls = _setup(tmp_path, uid=1000, present=present)
    assert calls == []
    assert out == "setup: ready (.venv/bin/recloop, v=7.0.15)\n"
