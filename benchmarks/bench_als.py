"""ALS: recloop's PyTorch ALS against ``implicit``'s CPU ALS, same data, same hyper-parameters.

Data: a synthetic implicit-feedback matrix of MovieLens-1M size (6040 users x 3706 items, ~1M
nonzeros): Zipf-like item popularity, log-normal user activity and a rank-16 latent taste
structure; 20% of each user's items are held out. Both models get the same confidence
``c_ui = 1 + alpha * count`` (``implicit`` multiplies its input by ``alpha``, so it is given
``count + 1 / alpha``), factors, regularization, iterations, CG steps (3) and thread count.

    .venv/bin/python benchmarks/bench_als.py [--threads 2] [--iterations 15] [--factors 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.als import ALS  # noqa: E402
from models.base import Retriever  # noqa: E402
from pipelines.core.metrics import evaluate_model  # noqa: E402


def synthetic(
    n_users: int = 6040, n_items: int = 3706, mean_log_activity: float = 4.6, seed: int = 0
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """``(train, test)`` binary ``(U, I)`` matrices; test = 20% of each user's items."""
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(n_users, 16)).astype(np.float32)
    q = rng.normal(size=(n_items, 16)).astype(np.float32)
    log_pop = -0.9 * np.log(np.arange(1, n_items + 1))
    rng.shuffle(log_pop)
    n_u = np.clip(rng.lognormal(mean_log_activity, 1.0, n_users).astype(int), 10, n_items // 2)
    # Gumbel top-n_u sampling without replacement from softmax(log_pop + 0.6 * p.q)
    keys = log_pop[None, :] + 0.6 * (p @ q.T) + rng.gumbel(size=(n_users, n_items))
    order = np.argsort(-keys, axis=1)
    cols = order[np.arange(n_items)[None, :] < n_u[:, None]]
    rows = np.repeat(np.arange(n_users), n_u)
    held = rng.random(len(rows)) < 0.2
    shape = (n_users, n_items)
    ones = np.ones(len(rows), dtype=np.float32)
    train = sp.csr_matrix((ones[~held], (rows[~held], cols[~held])), shape=shape)
    test = sp.csr_matrix((ones[held], (rows[held], cols[held])), shape=shape)
    return train, test


class ImplicitWrapper(Retriever):
    """Just enough of the interface to rank with ``implicit``'s factors."""

    name = "implicit"

    def __init__(self, user_factors: np.ndarray, item_factors: np.ndarray) -> None:
        self.x, self.y = user_factors, item_factors

    def fit(self, interactions, **kwargs):  # pragma: no cover - not used
        raise NotImplementedError

    def score(self, users, items):
        return (self.x[users] * self.y[items]).sum(1)

    def score_all(self, users):
        return self.x[users] @ self.y.T

    def config(self):
        return {}

    def state(self):
        return {}

    def load_state(self, state):
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=15)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--regularization", type=float, default=0.05)
    ap.add_argument("--alpha", type=float, default=40.0)
    ap.add_argument("--repeats", type=int, default=3, help="fits per library; best is reported")
    args = ap.parse_args()

    import threadpoolctl
    from implicit.cpu.als import AlternatingLeastSquares

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    train, test = synthetic()
    print(
        f"data: {train.shape[0]} users x {train.shape[1]} items, train nnz {train.nnz}, "
        f"test nnz {test.nnz} ({time.perf_counter() - t0:.1f}s to generate)"
    )
    print(
        f"factors={args.factors} regularization={args.regularization} alpha={args.alpha} "
        f"iterations={args.iterations} cg_steps=3 threads={args.threads} (torch intra-op = "
        f"implicit num_threads; BLAS limited to 1 thread for implicit)"
    )

    conf_input = train.copy()
    conf_input.data = conf_input.data + 1.0 / args.alpha  # implicit computes alpha * input
    ours_times: list[float] = []
    imp_times: list[float] = []
    ours = imp = None
    # interleaved, so a noisy neighbour on a shared machine hits both alike; best of each
    for _ in range(args.repeats):
        ours = ALS(
            factors=args.factors,
            regularization=args.regularization,
            alpha=args.alpha,
            iterations=args.iterations,
            device="cpu",
        )
        t0 = time.perf_counter()
        ours.fit(train)
        ours_times.append((time.perf_counter() - t0) / args.iterations)
        with threadpoolctl.threadpool_limits(1, "blas"):
            imp = AlternatingLeastSquares(
                factors=args.factors,
                regularization=args.regularization,
                alpha=args.alpha,
                iterations=args.iterations,
                num_threads=args.threads,
                random_state=0,
            )
            t0 = time.perf_counter()
            imp.fit(conf_input, show_progress=False)
            imp_times.append((time.perf_counter() - t0) / args.iterations)

    q_ours = evaluate_model(ours, train, test, k=10, with_auc=False)
    q_imp = evaluate_model(
        ImplicitWrapper(imp.user_factors, imp.item_factors), train, test, k=10, with_auc=False
    )
    t_ours, t_imp = min(ours_times), min(imp_times)
    print()
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    )
    print(f"{'':<22}{'s/iteration':>12}{'NDCG@10':>10}{'recall@10':>11}{'recall@100':>12}")
    for label, t, q in (
        ("recloop ALS (torch)", t_ours, q_ours),
        ("implicit ALS (cpu)", t_imp, q_imp),
    ):
        print(
            f"{label:<22}{t:>12.4f}{q['ndcg@10']:>10.4f}{q['recall@10']:>11.4f}{q['recall@100']:>12.4f}"
        )
    print()
    print(f"time ratio recloop/implicit: {t_ours / t_imp:.2f}x (floor: <= 1.5x)")
    print(f"NDCG@10 ratio recloop/implicit: {q_ours['ndcg@10'] / q_imp['ndcg@10']:.3f}")
    fmt = ", ".join
    print(f"every fit, s/iteration: recloop [{fmt(f'{t:.4f}' for t in ours_times)}], ", end="")
    print(f"implicit [{fmt(f'{t:.4f}' for t in imp_times)}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
