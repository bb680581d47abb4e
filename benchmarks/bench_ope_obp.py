"""Our off-policy estimators on the Open Bandit Pipeline's synthetic experiment (obp not installed).

  .venv/bin/python benchmarks/bench_ope_obp.py [--runs 20] [--rounds 10000] [--actions 30]
      [--dim-context 5] [--beta -3] [--n-boot 0]

Reproduces ``examples/synthetic/evaluate_off_policy_estimators.py`` of st-tech/zr-obp (obp 0.5.x)
with ``--n_runs 20 --n_rounds 10000 --n_actions 30 --dim_context 5 --beta -3
--base_model_for_evaluation_policy logistic_regression --base_model_for_reg_model
logistic_regression`` and feeds :func:`pipelines.release.ope.estimate` the resulting table. Run ``i``:

* **Data** (``SyntheticBanditDataset(random_state=i)``, ``logistic_reward_function``): contexts
  ``x ~ N(0, I_d)``; actions one-hot; ``q(x, a) = sigmoid(z)`` where ``z`` is the z-scored (over the
  whole ``(n, A)`` matrix) ``x̃·c + ã·b + x̃ᵀ M ã`` with ``x̃ = [1, x]``, ``ã = [1, onehot(a)]``
  (degree-1 polynomial features keep the bias column) and ``c, b, M ~ U(-1, 1)`` drawn from
  ``RandomState(i)`` (the same coefficients for every batch). Behaviour policy
  ``π_b = softmax(beta · q(x, ·))`` (``beta = -3`` favours low-reward actions); actions drawn by
  OBP's ``sample_action_fast`` (inverse CDF with ``RandomState(i)`` uniforms: OBP re-seeds it on
  every batch, so train and test reuse the same uniforms — kept); rewards ``Bernoulli(q)``. A
  training batch and a test batch of ``--rounds`` each.
* **Evaluation policy** (``IPWLearner`` + ``predict_proba``): a multinomial logistic regression
  (``C=100, max_iter=10000, random_state=12345``) fitted on the training batch with ``y = action``
  and ``sample_weight = reward / pscore``; ``π_e(· | x) = softmax(predict_proba(x) / τ)``, ``τ = 1``
  — a softmax over class *probabilities* in [0, 1], hence close to uniform.
* **Reward model** (``RegressionModel.fit_predict(n_folds=3, random_state=12345)``): a logistic
  regression (same hyper-parameters) on ``[x, onehot(a)]`` → reward, 3-fold cross-fitted on the
  test batch (``KFold(shuffle=True)``); ``q̂(x_i, a)`` for every action from the fold not
  containing ``i``.
* **Truth** (``calc_ground_truth_policy_value``): ``mean_i Σ_a π_e(a | x_i) q(x_i, a)`` over the
  test contexts. Relative error = ``|estimate - truth| / truth`` (OBP's ``relative-ee``).

The z-score is obp 0.5.5's ``(z - mean) / std`` (0.5.6 changed it to ``z - mean / std``). With it the
runs reproduce OBP's published README figures: IPS to all six printed decimals (same data, same
target policy), SNIPS to 1e-6, DM / DR to 3e-5 (the reward model's lbfgs fit under sklearn 1.9).

Our table, one row per test round: ``reward``; ``propensity = π_b(a_i | x_i)``;
``target_propensity = π_e(a_i | x_i)``; ``predicted_reward = q̂(x_i, a_i)``;
``target_predicted_reward = Σ_a π_e(a | x_i) q̂(x_i, a)``. ``ope.estimate`` with ``n_boot = 0``
(``--n-boot N`` adds interval coverage). ``sndr (bench)`` is OBP's self-normalised DR computed
here (``ope.py`` has no SNDR), and ``on-policy`` samples ``a ~ π_e`` for the same test contexts with
Bernoulli rewards: the error of an A/B test of the same size (the floor).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.release import ope

# examples/synthetic/README.md of st-tech/zr-obp, the command above: relative-ee mean, std
OBP_PUBLISHED = {
    "dm": (0.074390, 0.024525),
    "ips": (0.009481, 0.006899),  # OBP "ipw" (no clipping: lambda_ = inf)
    "snips": (0.006665, 0.004541),  # OBP "snipw"
    "dr": (0.006175, 0.004245),
    "sndr (bench)": (0.006118, 0.003997),
}
LR_PARAMS = {"C": 100.0, "max_iter": 10_000, "random_state": 12345}  # conf/hyperparams.yaml


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(n, A)``."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def logistic_reward(context: np.ndarray, n_actions: int, seed: int) -> np.ndarray:
    """OBP's ``logistic_reward_function`` with one-hot action contexts: ``q(x, a)``, ``(n, A)``."""
    rs = np.random.RandomState(seed)
    x = np.c_[np.ones(len(context)), context]  # PolynomialFeatures(degree=1): bias + x
    act = np.c_[np.ones(n_actions), np.eye(n_actions)]
    c = rs.uniform(-1, 1, size=x.shape[1])
    b = rs.uniform(-1, 1, size=act.shape[1])
    m = rs.uniform(-1, 1, size=(x.shape[1], act.shape[1]))
    z = (x @ c)[:, None] + (act @ b)[None, :] + x @ m @ act.T
    z = (z - z.mean()) / z.std()  # degree (1) * z-score, as obp 0.5.5
    return sigmoid(z)


def sample_action_fast(prob: np.ndarray, seed: int) -> np.ndarray:
    """OBP's ``sample_action_fast``: one inverse-CDF draw per row with a fresh ``RandomState``."""
    u = np.random.RandomState(seed).uniform(size=len(prob))[:, None]
    return (prob.cumsum(axis=1) > u).argmax(axis=1)


class SyntheticBandit:
    """OBP's ``SyntheticBanditDataset`` (binary rewards, logistic reward, softmax(beta q) logging)."""

    def __init__(self, n_actions: int, dim_context: int, beta: float, seed: int) -> None:
        self.n_actions, self.dim_context, self.beta, self.seed = n_actions, dim_context, beta, seed
        self.rng = np.random.RandomState(seed)

    def batch(self, n: int) -> dict[str, np.ndarray]:
        """``context (n, d)``, ``action (n,)``, ``reward (n,)``, ``q (n, A)``, ``pscore (n,)``."""
        context = self.rng.normal(size=(n, self.dim_context))
        q = logistic_reward(context, self.n_actions, self.seed)
        pi_b = softmax(self.beta * q)
        action = sample_action_fast(pi_b, self.seed)
        rows = np.arange(n)
        reward = self.rng.binomial(n=1, p=q[rows, action])
        return {
            "context": context,
            "action": action,
            "reward": reward,
            "q": q,
            "pscore": pi_b[rows, action],
        }


def evaluation_policy(train: dict[str, np.ndarray], n_actions: int) -> object:
    """``IPWLearner(LogisticRegression)`` fitted on ``train``; returns ``predict_proba(x) (n, A)``."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(**LR_PARAMS)
    clf.fit(train["context"], train["action"], sample_weight=train["reward"] / train["pscore"])
    if len(clf.classes_) != n_actions:
        raise RuntimeError(f"training batch shows {len(clf.classes_)} of {n_actions} actions")

    def predict_proba(context: np.ndarray) -> np.ndarray:
        return softmax(clf.predict_proba(context) / 1.0)  # tau = 1

    return predict_proba


def reward_model(test: dict[str, np.ndarray], n_actions: int, n_folds: int = 3) -> np.ndarray:
    """``RegressionModel(LogisticRegression).fit_predict(n_folds=3)``: ``q̂ (n, A)``, cross-fitted."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold

    context, action, reward = test["context"], test["action"], test["reward"]
    eye = np.eye(n_actions)
    q_hat = np.zeros((len(context), n_actions))
    kf = KFold(n_splits=n_folds, shuffle=True, random_state=LR_PARAMS["random_state"])
    for tr, te in kf.split(context):
        model = LogisticRegression(**LR_PARAMS)
        model.fit(np.c_[context[tr], eye[action[tr]]], reward[tr])
        for a in range(n_actions):
            x = np.c_[context[te], np.tile(eye[a], (len(te), 1))]
            q_hat[te, a] = model.predict_proba(x)[:, 1]
    return q_hat


def one_run(args: argparse.Namespace, run: int) -> dict[str, float]:
    data = SyntheticBandit(args.actions, args.dim_context, args.beta, seed=run)
    train = data.batch(args.rounds)
    test = data.batch(args.rounds)
    pi_e = evaluation_policy(train, args.actions)(test["context"])  # (n, A)
    q_hat = reward_model(test, args.actions)
    rows = np.arange(args.rounds)
    a = test["action"]
    truth = float((pi_e * test["q"]).sum(axis=1).mean())
    table = pd.DataFrame(
        {
            "reward": test["reward"].astype(np.float64),
            "propensity": test["pscore"],
            "target_propensity": pi_e[rows, a],
            "predicted_reward": q_hat[rows, a],
            "target_predicted_reward": (pi_e * q_hat).sum(axis=1),
        }
    )
    res = ope.estimate(table, n_boot=args.n_boot, seed=run, source=f"obp run {run}")
    out: dict[str, float] = {"truth": truth, "logging": float(test["reward"].mean())}
    w = table["target_propensity"].to_numpy() / table["propensity"].to_numpy()
    out["max_weight"] = float(w.max())
    for name, e in res.items():
        out[name] = e["estimate"]
        out[f"{name}:ess"] = e["ess"]
        if args.n_boot:
            out[f"{name}:covered"] = float(e["ci_low"] <= truth <= e["ci_high"])
    # OBP's SelfNormalizedDoublyRobust, for comparison (not in ope.py)
    resid = w * (table["reward"].to_numpy() - table["predicted_reward"].to_numpy())
    out["sndr (bench)"] = float(
        (table["target_predicted_reward"].to_numpy() + resid / w.mean()).mean()
    )
    # on-policy floor: pi_e's own actions on the same contexts, Bernoulli rewards
    rng = np.random.default_rng([run, 17])
    a_on = (pi_e.cumsum(axis=1) > rng.random(args.rounds)[:, None]).argmax(axis=1)
    out["on-policy"] = float((rng.random(args.rounds) < test["q"][rows, a_on]).mean())
    return out


def summarise(runs: list[dict[str, float]], n_boot: int) -> pd.DataFrame:
    rows = []
    for name in (*ope.ESTIMATORS, "sndr (bench)", "on-policy"):
        rel = np.array([abs(r[name] - r["truth"]) / r["truth"] for r in runs])
        obp = OBP_PUBLISHED.get(name, (float("nan"), float("nan")))
        row = {
            "estimator": name,
            "rel_err_mean": rel.mean(),
            "rel_err_std": rel.std(ddof=1) if len(rel) > 1 else float("nan"),
            "obp_mean": obp[0],
            "obp_std": obp[1],
            "bias_rel": np.mean([(r[name] - r["truth"]) / r["truth"] for r in runs]),
        }
        if f"{name}:ess" in runs[0]:
            row["mean_ess"] = np.mean([r[f"{name}:ess"] for r in runs])
        if n_boot and f"{name}:covered" in runs[0]:
            row["ci_coverage"] = np.mean([r[f"{name}:covered"] for r in runs])
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=10_000)
    p.add_argument("--actions", type=int, default=30)
    p.add_argument("--dim-context", type=int, default=5)
    p.add_argument("--beta", type=float, default=-3.0)
    p.add_argument("--n-boot", type=int, default=0, help="bootstrap replicates (0: no intervals)")
    args = p.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    pd.set_option("display.width", 160)

    t0 = time.perf_counter()
    runs = []
    for r in range(args.runs):
        runs.append(one_run(args, r))
        print(f"run {r}: truth {runs[-1]['truth']:.4f}", file=sys.stderr, flush=True)
    dt = time.perf_counter() - t0
    print(
        f"OBP synthetic setting: {args.runs} runs x {args.rounds} rounds, {args.actions} actions, "
        f"dim_context {args.dim_context}, beta {args.beta}; clip {ope.DEFAULT_CLIP}; "
        f"n_boot {args.n_boot}; mean truth {np.mean([r['truth'] for r in runs]):.4f}, "
        f"logging reward {np.mean([r['logging'] for r in runs]):.4f}, "
        f"max weight {max(r['max_weight'] for r in runs):.2f}; {dt:.1f} s"
    )
    table = summarise(runs, args.n_boot)
    fmt = {c: "{:.6f}".format for c in ("rel_err_mean", "rel_err_std", "obp_mean", "obp_std")}
    fmt.update({c: "{:.4f}".format for c in ("bias_rel", "ci_coverage") if c in table})
    fmt.update({"mean_ess": "{:.0f}".format})
    print(table.to_string(formatters=fmt, index=False, na_rep="-"))


if __name__ == "__main__":
    main()
