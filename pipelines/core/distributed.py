"""Data-parallel training (PyTorch DDP) for the two-tower and the DLRM ranker.

``recloop train --model M --date D --nproc N`` with ``N > 1`` re-launches itself under
``torchrun --standalone --nproc-per-node N`` (:func:`launch`); each process enters
:func:`session`, which reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``), joins the process group (``gloo`` on CPU, ``nccl`` on CUDA,
one GPU per local rank) and logs one line with its rank and the world size.

Inside a session the models' training loops call the helpers below; outside one (world size 1)
every helper is the identity, so the one-process path is today's, byte for byte:

- :func:`shard`: this rank's rows of a global batch — the same seeded permutation on every rank,
  strided by rank (``DistributedSampler``'s split), so the ranks see disjoint rows whose union is
  the one-process batch;
- :func:`wrap`: a module (or a loss function over a module, :func:`wrap_loss`) in
  ``DistributedDataParallel``: gradients are averaged across ranks in ``backward``, so every
  rank's optimizer takes the same step and the weights stay identical;
- :func:`mean` (all-reduce) for logged metrics, :func:`agree` (broadcast from rank 0) for
  validation numbers that drive early stopping, so all ranks stop at the same epoch and none
  waits forever in a collective;
- :func:`is_main`: only rank 0 writes the artifact (same files and format as one process).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

#: models ``recloop train --nproc N`` trains data-parallel
DDP_MODELS = ("two_tower", "ranker")


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def world_size() -> int:
    """Processes in the current group; 1 outside a DDP session."""
    dist = _dist()
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank; 0 outside a DDP session."""
    dist = _dist()
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes results (rank 0, or the only process)."""
    return rank() == 0


def env_world_size(env: Mapping[str, str] | None = None) -> int:
    """``WORLD_SIZE`` as torchrun set it (1 when unset: not launched by torchrun)."""
    env = os.environ if env is None else env
    return int(env.get("WORLD_SIZE") or 1)


@contextlib.contextmanager
def session(env: Mapping[str, str] | None = None) -> Iterator[int]:
    """Join the process group torchrun described in ``env`` (default ``os.environ``) for the
    block, yielding the world size; a no-op yielding 1 when ``WORLD_SIZE`` is unset or 1."""
    env = os.environ if env is None else env
    size = env_world_size(env)
    if size <= 1:
        yield 1
        return
    import torch

    dist = _dist()
    local = int(env.get("LOCAL_RANK") or 0)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)  # "cuda" then means this rank's GPU
    dist.init_process_group(backend=backend)
    log.info(
        "distributed: rank %d of world size %d (local rank %d, backend %s, master %s:%s)",
        dist.get_rank(), dist.get_world_size(), local, backend,
        env.get("MASTER_ADDR", "?"), env.get("MASTER_PORT", "?"),
    )  # fmt: skip
    old = logging.getLogRecordFactory()
    prefix = f"[rank {dist.get_rank()}/{dist.get_world_size()}] "

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = old(*args, **kwargs)
        record.msg = prefix + str(record.msg)  # every log line says which process wrote it
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield dist.get_world_size()
    finally:
        logging.setLogRecordFactory(old)
        dist.destroy_process_group()


def shard(indices: Any) -> Any:
    """This rank's share of a global batch ``(B,)`` of row indices: ``indices[rank::world]``
    (``(ceil((B - rank) / world),)``); ``indices`` itself with one process."""
    size = world_size()
    return indices if size == 1 else indices[rank() :: size]


def per_rank(batch_size: int) -> int:
    """Rows per rank when a global batch of ``batch_size`` is split (at least 1)."""
    return max(batch_size // world_size(), 1)


def wrap(module: Any, ignore: Sequence[str] = ()) -> Any:
    """``module`` in ``DistributedDataParallel`` (gradients averaged across ranks in
    ``backward``); ``module`` itself with one process. Parameters a step does not reach are
    allowed; ``ignore``: names (as in ``module.named_parameters()``) of parameters training
    never reaches (the two-tower's id tables when its towers read features only), left out of
    the all-reduce instead of averaging zeros every step."""
    if world_size() == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    if ignore:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, list(ignore))
    return DistributedDataParallel(module, find_unused_parameters=True)


def wrap_loss(
    module: Any, loss: Callable[..., Any], ignore: Sequence[str] = ()
) -> Callable[..., Any]:
    """``loss(*inputs)`` (a scalar computed with ``module``'s parameters) run through
    :func:`wrap` (``ignore``: names in ``module``), so its gradients are averaged across ranks;
    ``loss`` itself with one process."""
    if world_size() == 1:
        return loss
    from torch import nn

    class _Loss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, *inputs: Any) -> Any:
            return loss(*inputs)

    return wrap(_Loss(), [f"inner.{name}" for name in ignore])


def _tensor(value: float) -> Any:
    import torch

    dist = _dist()
    cuda = dist.get_backend() == "nccl"
    return torch.tensor([value], dtype=torch.float64, device="cuda" if cuda else "cpu")


def mean(value: float) -> float:
    """The mean of ``value`` over the ranks (all-reduce); ``value`` with one process."""
    size = world_size()
    if size == 1:
        return value
    t = _tensor(value)
    _dist().all_reduce(t)
    return float(t.item()) / size


def agree(value: float) -> float:
    """Rank 0's ``value`` on every rank (broadcast), so decisions taken on it (early stopping,
    best epoch) are identical everywhere; ``value`` with one process."""
    if world_size() == 1:
        return value
    t = _tensor(value)
    _dist().broadcast(t, src=0)
    return float(t.item())


def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m pipelines.cli ARGV``."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={int(nproc)}", "-m", "pipelines.cli", *argv,
    ]  # fmt: skip


def launch(
    nproc: int, argv: Sequence[str], env: Mapping[str, str] | None = None, capture: bool = False
) -> subprocess.CompletedProcess:
    """Run ``recloop ARGV`` in ``nproc`` processes under torchrun and wait. ``env``: extra
    variables (the settings, :meth:`Settings.as_env`) over ``os.environ``. ``capture``: keep the
    standard output (rank 0's result) in the returned process; standard error (every rank's
    log) passes through. ``RuntimeError`` naming the exit status when a process failed."""
    cmd = torchrun_command(nproc, argv)
    log.info("launching %d training processes: %s", nproc, " ".join(cmd))
    proc = subprocess.run(
        cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE if capture else None,
        text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun with {nproc} processes exited {proc.returncode}: {cmd}")
    return proc


def train_in_processes(settings: Any, model: str, date: str) -> dict[str, Any]:
    """``recloop train --model MODEL --date DATE`` in ``settings.train_nproc`` DDP processes
    (the DAG's training tasks under ``RECLOOP_TRAIN_NPROC``); rank 0's result summary."""
    argv = ["train", "--model", model, "--date", str(date)]
    proc = launch(settings.train_nproc, argv, settings.as_env(), capture=True)
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"training in processes printed no result: {proc.stdout!r}") from exc
