"""The interval methods of `orbit uq benchmark`, all on the same standardised split and with the same
small budget (`Budget`: hidden width, optimizer steps per network, batch size, learning rate; every
neural network keeps its best state by the validation loss, checked every `Budget.check_every` steps).

Each baseline's `fit_<method>(data, budget, seed)` returns a `Fitted` whose `interval(gamma)` gives
(lower, upper) on the test inputs (standardised units) for any gamma it supports without retraining.
PI3NN is not fitted here: the benchmark trains it through the one trainer (`trained.py`), as
`orbit train` does, and reports two step-4 variants of the same three networks:

- pi3nn     alpha, beta by bisection on the training rows (the paper);
- pi3nn_cal alpha = beta on the calibration rows (split conformal's rank, `HeldOutCalibrator`): rows no
            network trained, early-stopped or was chosen on.

Rows (`SplitData`): every method fits on the training rows and early-stops on the validation rows (the
search scores trials there too); the calibration rows are read only by the three methods that
calibrate on held-out rows (pi3nn_cal, conformal, cqr), so their coverage guarantee is not spent on
rows the networks or the search have already looked at.

The baselines:
- ensemble  deep ensemble (Lakshminarayanan et al. 2017): 5 MLPs with a Gaussian likelihood (mean and
            variance heads), the mixture's mean and variance, mean +- z sd.
- mc_dropout MC dropout (Gal & Ghahramani 2016) with a heteroscedastic Gaussian head (Kendall & Gal
            2017): dropout 0.1, 100 forward passes; variance = variance of the means + mean variance.
- gp        exact Gaussian process (scikit-learn): constant * (ARD) RBF or Matern-5/2 + white noise (noise
            level >= `gp_noise_floor`), marginal likelihood fitted on at most `Budget.gp_max_rows` training
            rows (a random subset above that).
- bnn       mean-field variational BNN, Bayes by backprop (Blundell et al. 2015), hand-written (no light
            library fits): N(0, `bnn_prior_sd`^2) prior, Gaussian posteriors, learned homoscedastic noise,
            100 samples.
- conformal split conformal (MAPIE SplitConformalRegressor, absolute residual score) around an MLP trained
            on the training rows, conformalised on the calibration rows.
- cqr       conformalized quantile regression (MAPIE ConformalizedQuantileRegressor) with scikit-learn
            gradient-boosting quantile regressors (the MAPIE reference setup; `cqr_*` their trees),
            conformalised on the
            calibration rows; its quantile models are trained for one gamma (no calibration curve).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.stats import norm
from torch import nn

from .model import mlp

METHODS = ("pi3nn", "pi3nn_cal", "ensemble", "mc_dropout", "gp", "bnn", "conformal", "cqr")
# baselines whose interval at a row depends on that row alone (MC dropout's masks are drawn for the whole batch)
ROW_WISE = ("ensemble", "gp", "bnn", "conformal", "cqr")


@dataclass
class Budget:
    hidden: int = 64
    steps: int = 1500  # optimizer steps per network (the ensemble trains 5, PI3NN 3)
    batch_size: int = 128
    lr: float = 3e-3
    check_every: int = 100
    ensemble_members: int = 5
    mc_samples: int = 100
    gp_max_rows: int = 1500
    confidence: float = 0.95  # the gamma CQR's quantile models are trained for
    # AdamW weight decay of the weight matrices; None: each method's shipped setting (the baselines: none,
    # PI3NN: its config's train.weight_decay on f). Set by the per-set search (`tuning.py`).
    weight_decay: float | None = None
    # PI3NN's u and l only (`options.bound_weight_decay`); None: the config's 0, which keeps the OOD widening
    bound_weight_decay: float | None = None
    # the knobs of the non-network baselines (defaults: the shipped settings; searched by `tuning.py`)
    gp_kernel: str = "rbf"  # "rbf" or "matern52"
    gp_ard: bool = True  # one length scale per input, or one for all
    gp_noise_floor: float = 1e-5  # lower bound of the white-noise level (standardised y)
    bnn_prior_sd: float = 1.0
    cqr_estimators: int = 100
    cqr_depth: int = 3
    cqr_lr: float = 0.1
    cqr_min_leaf: int = 1

    def pi3nn_overrides(self) -> list[str]:
        """The same budget for PI3NN's trainer runs (the rest of its settings: configs/plugins/pi3nn/benchmark.yaml)."""
        h, n = self.hidden, self.steps
        decay = [] if self.weight_decay is None else [f"train.weight_decay={self.weight_decay}"]
        if self.bound_weight_decay is not None:
            decay.append(f"options.bound_weight_decay={self.bound_weight_decay}")
        return [f"model.hidden=[{h},{h}]", f"train.max_steps={n}", f"options.bound_steps={n}", f"train.ckpt_every={n}",
                f"data.batch_size={self.batch_size}", f"train.lr={self.lr}", *decay]


@dataclass
class SplitData:
    """Standardised float32 arrays; y 1-D."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    x_cal: np.ndarray | None = None  # held-out calibration rows: pi3nn_cal, conformal and cqr only
    y_cal: np.ndarray | None = None

    def calibration_rows(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        if self.x_cal is None or len(self.x_cal) == 0:
            raise ValueError(f"{method} calibrates on held-out rows: this split has no calibration part "
                             f"(cal_fraction > 0)")
        return self.x_cal, self.y_cal


@dataclass
class Fitted:
    interval: Callable[[float], tuple[np.ndarray, np.ndarray]]
    mean: np.ndarray
    any_gamma: bool = True  # False: `interval` holds only the gamma it was fitted for
    extra: dict | None = None


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


def _optimizer(params, lr: float, weight_decay: float | None) -> torch.optim.Optimizer:
    """Adam; with a weight decay, AdamW (decoupled, Loshchilov & Hutter 2019) on the weight matrices only,
    as the trainer decays PI3NN's networks."""
    params = list(params)
    if not weight_decay:
        return torch.optim.Adam(params, lr=lr)
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def train(params, loss_fn, x: np.ndarray, y: np.ndarray, val_loss_fn, budget: Budget, seed: int,
          modules: list[nn.Module], steps: int | None = None, lr: float | None = None) -> float:
    """Adam (AdamW with `budget.weight_decay`) with cosine decay on minibatches of (x, y); restores the
    state of the best validation loss."""
    steps, lr = steps or budget.steps, lr or budget.lr
    g = torch.Generator().manual_seed(seed)
    xt, yt = _t(x), _t(y)
    opt = _optimizer(params, lr, budget.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.01)
    best, best_state = math.inf, None
    n = len(xt)
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (min(budget.batch_size, n),), generator=g)
        for m in modules:
            m.train()
        loss = loss_fn(xt[idx], yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % budget.check_every == 0 or step == steps:
            for m in modules:
                m.eval()
            with torch.no_grad():
                v = float(val_loss_fn())
            if v < best:
                best, best_state = v, [copy.deepcopy(m.state_dict()) for m in modules]
    if best_state is not None:
        for m, s in zip(modules, best_state):
            m.load_state_dict(s)
    for m in modules:
        m.eval()
    return best


# ----------------------------------------------------------------------------- Gaussian heads
class GaussianMLP(nn.Module):
    """x -> (mean, variance); optional dropout after every hidden layer."""

    def __init__(self, d: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(d, hidden), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(hidden, hidden), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        out = self.head(self.body(x))
        return out[:, 0], nn.functional.softplus(out[:, 1]) + 1e-6


def gaussian_nll(model, xb, yb):
    mean, var = model(xb)
    return nn.functional.gaussian_nll_loss(mean, yb, var)


def _gaussian_fitted(mean: np.ndarray, var: np.ndarray) -> Fitted:
    sd = np.sqrt(np.maximum(var, 1e-12))

    def interval(gamma):
        z = norm.ppf(0.5 + gamma / 2)
        return mean - z * sd, mean + z * sd

    return Fitted(interval, mean, extra={"sd": sd})


def fit_ensemble(data: SplitData, budget: Budget, seed: int) -> Fitted:
    xv, yv, xt = _t(data.x_val), _t(data.y_val), _t(data.x_test)
    means, variances = [], []
    for member in range(budget.ensemble_members):
        torch.manual_seed(seed * 100 + member)
        net = GaussianMLP(data.x_train.shape[1], budget.hidden)
        train(net.parameters(), lambda xb, yb, net=net: gaussian_nll(net, xb, yb), data.x_train, data.y_train,
              lambda net=net: gaussian_nll(net, xv, yv), budget, seed * 100 + member, [net])
        with torch.no_grad():
            m, v = net(xt)
        means.append(m.numpy().astype(np.float64))
        variances.append(v.numpy().astype(np.float64))
    means, variances = np.stack(means), np.stack(variances)
    mean = means.mean(0)
    return _gaussian_fitted(mean, (variances + means ** 2).mean(0) - mean ** 2)


def fit_mc_dropout(data: SplitData, budget: Budget, seed: int, dropout: float = 0.1) -> Fitted:
    torch.manual_seed(seed)
    net = GaussianMLP(data.x_train.shape[1], budget.hidden, dropout)
    xv, yv, xt = _t(data.x_val), _t(data.y_val), _t(data.x_test)
    train(net.parameters(), lambda xb, yb: gaussian_nll(net, xb, yb), data.x_train, data.y_train,
          lambda: gaussian_nll(net, xv, yv), budget, seed, [net])
    net.train()  # dropout on at prediction time
    torch.manual_seed(seed + 7)
    with torch.no_grad():
        draws = [net(xt) for _ in range(budget.mc_samples)]
    net.eval()
    means = torch.stack([d[0] for d in draws]).numpy().astype(np.float64)
    variances = torch.stack([d[1] for d in draws]).numpy().astype(np.float64)
    return _gaussian_fitted(means.mean(0), means.var(0) + variances.mean(0))


# ----------------------------------------------------------------------------- Gaussian process
def fit_gp(data: SplitData, budget: Budget, seed: int) -> Fitted:
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, Matern, WhiteKernel

    x, y = data.x_train, data.y_train
    if len(x) > budget.gp_max_rows:
        rows = np.random.default_rng([seed, 5]).choice(len(x), budget.gp_max_rows, replace=False)
        x, y = x[rows], y[rows]
    if budget.gp_kernel not in ("rbf", "matern52"):
        raise ValueError(f"gp_kernel must be 'rbf' or 'matern52', got {budget.gp_kernel!r}")
    scale = np.ones(x.shape[1]) if budget.gp_ard else 1.0
    shape = RBF(scale, (1e-2, 1e3)) if budget.gp_kernel == "rbf" else Matern(scale, (1e-2, 1e3), nu=2.5)
    floor = budget.gp_noise_floor
    kernel = ConstantKernel(1.0, (1e-2, 1e2)) * shape + WhiteKernel(max(0.1, 2 * floor), (floor, 1e1))
    gp = GaussianProcessRegressor(kernel, normalize_y=False, n_restarts_optimizer=0, random_state=seed)
    gp.fit(x.astype(np.float64), y.astype(np.float64))
    mean, sd = gp.predict(data.x_test.astype(np.float64), return_std=True)  # sd includes the white noise
    return _gaussian_fitted(mean, sd ** 2)


# ----------------------------------------------------------------------------- Bayes by backprop
class BayesLinear(nn.Module):
    """Mean-field Gaussian weights, reparameterised; KL to a N(0, prior_sd^2) prior in closed form."""

    def __init__(self, n_in: int, n_out: int, prior_sd: float = 1.0):
        super().__init__()
        self.w_mu = nn.Parameter(torch.empty(n_out, n_in).uniform_(-1, 1) / math.sqrt(n_in))
        self.w_rho = nn.Parameter(torch.full((n_out, n_in), -5.0))
        self.b_mu = nn.Parameter(torch.zeros(n_out))
        self.b_rho = nn.Parameter(torch.full((n_out,), -5.0))
        self.prior_sd = prior_sd

    def forward(self, x):
        w_sd, b_sd = nn.functional.softplus(self.w_rho), nn.functional.softplus(self.b_rho)
        w = self.w_mu + w_sd * torch.randn_like(w_sd)
        b = self.b_mu + b_sd * torch.randn_like(b_sd)
        return nn.functional.linear(x, w, b)

    def kl(self):
        total = 0.0
        for mu, rho in ((self.w_mu, self.w_rho), (self.b_mu, self.b_rho)):
            sd = nn.functional.softplus(rho)
            total = total + (torch.log(self.prior_sd / sd) + (sd ** 2 + mu ** 2) / (2 * self.prior_sd ** 2) - 0.5).sum()
        return total


class BayesMLP(nn.Module):
    def __init__(self, d: int, hidden: int, prior_sd: float = 1.0):
        super().__init__()
        self.l1, self.l2, self.out = (BayesLinear(d, hidden, prior_sd), BayesLinear(hidden, hidden, prior_sd),
                                      BayesLinear(hidden, 1, prior_sd))
        self.log_noise = nn.Parameter(torch.tensor(-1.0))

    def forward(self, x):
        return self.out(torch.relu(self.l2(torch.relu(self.l1(x)))))[:, 0]

    def kl(self):
        return self.l1.kl() + self.l2.kl() + self.out.kl()


def fit_bnn(data: SplitData, budget: Budget, seed: int) -> Fitted:
    torch.manual_seed(seed)
    net = BayesMLP(data.x_train.shape[1], budget.hidden, budget.bnn_prior_sd)
    n = len(data.x_train)
    xv, yv, xt = _t(data.x_val), _t(data.y_val), _t(data.x_test)

    def elbo(xb, yb):  # negative ELBO per training point
        var = torch.exp(2 * net.log_noise).expand_as(yb)
        return nn.functional.gaussian_nll_loss(net(xb), yb, var, full=True) + net.kl() / n

    def val_nll():
        torch.manual_seed(seed + 3)
        preds = torch.stack([net(xv) for _ in range(20)])
        var = preds.var(0) + torch.exp(2 * net.log_noise)
        return nn.functional.gaussian_nll_loss(preds.mean(0), yv, var)

    train(net.parameters(), elbo, data.x_train, data.y_train, val_nll, budget, seed, [net])
    torch.manual_seed(seed + 7)
    with torch.no_grad():
        preds = torch.stack([net(xt) for _ in range(budget.mc_samples)]).numpy().astype(np.float64)
        noise = float(torch.exp(2 * net.log_noise))
    return _gaussian_fitted(preds.mean(0), preds.var(0) + noise)


# ----------------------------------------------------------------------------- conformal (MAPIE)
class TorchMLPRegressor:
    """A scikit-learn style regressor (fit / predict) around a ReLU MLP trained with MSE, for MAPIE."""

    def __init__(self, budget: Budget, seed: int, x_val: np.ndarray, y_val: np.ndarray):
        self.budget, self.seed, self.x_val, self.y_val = budget, seed, x_val, y_val

    def fit(self, x, y):
        torch.manual_seed(self.seed)
        self.n_features_in_ = x.shape[1]
        self.net_ = mlp(x.shape[1], [self.budget.hidden, self.budget.hidden], "relu")
        xv, yv = _t(self.x_val), _t(self.y_val)
        mse = lambda xb, yb: ((self.net_(xb)[:, 0] - yb) ** 2).mean()  # noqa: E731
        train(self.net_.parameters(), mse, x, y, lambda: mse(xv, yv), self.budget, self.seed, [self.net_])
        return self

    def predict(self, x):
        with torch.no_grad():
            return self.net_(_t(x))[:, 0].numpy().astype(np.float64)

    def get_params(self, deep=True):
        return {"budget": self.budget, "seed": self.seed, "x_val": self.x_val, "y_val": self.y_val}

    def __sklearn_is_fitted__(self):
        return hasattr(self, "net_")


def fit_conformal(data: SplitData, budget: Budget, seed: int) -> Fitted:
    from mapie.regression import SplitConformalRegressor

    x_cal, y_cal = data.calibration_rows("conformal")
    est = TorchMLPRegressor(budget, seed, data.x_val, data.y_val).fit(data.x_train, data.y_train)
    mean = est.predict(data.x_test)
    cache: dict[float, tuple] = {}

    def interval(gamma):
        if gamma not in cache:
            scr = SplitConformalRegressor(est, confidence_level=gamma, prefit=True)
            scr.conformalize(x_cal, y_cal)
            try:
                _, pis = scr.predict_interval(data.x_test)
                cache[gamma] = (pis[:, 0, 0].astype(np.float64), pis[:, 1, 0].astype(np.float64))
            except ValueError:  # fewer calibration rows than 1 / (1 - gamma): the conformal interval is unbounded
                cache[gamma] = (np.full(len(mean), -np.inf), np.full(len(mean), np.inf))
        return cache[gamma]

    return Fitted(interval, mean)


def fit_cqr(data: SplitData, budget: Budget, seed: int) -> Fitted:
    gamma = budget.confidence
    x_cal, y_cal = data.calibration_rows("cqr")
    from mapie.regression import ConformalizedQuantileRegressor
    from sklearn.ensemble import GradientBoostingRegressor

    est = GradientBoostingRegressor(loss="quantile", n_estimators=budget.cqr_estimators, max_depth=budget.cqr_depth,
                                    learning_rate=budget.cqr_lr, min_samples_leaf=budget.cqr_min_leaf,
                                    random_state=seed)
    cqr = ConformalizedQuantileRegressor(est, confidence_level=gamma, prefit=False)
    cqr.fit(data.x_train, data.y_train)
    cqr.conformalize(x_cal, y_cal)
    try:
        pred, pis = cqr.predict_interval(data.x_test)
        lower, upper = pis[:, 0, 0].astype(np.float64), pis[:, 1, 0].astype(np.float64)
    except ValueError:  # too few calibration rows for this gamma: the conformal interval is unbounded
        pred = np.zeros(len(data.x_test))  # (the training mean; RMSE of this fit is not meaningful)
        lower, upper = np.full(len(pred), -np.inf), np.full(len(pred), np.inf)

    def interval(g):
        if abs(g - gamma) > 1e-12:
            raise ValueError(f"CQR was fitted for gamma={gamma}; another gamma ({g}) needs new quantile models")
        return lower, upper

    return Fitted(interval, np.asarray(pred, dtype=np.float64), any_gamma=False)


FITTERS = {"ensemble": fit_ensemble, "mc_dropout": fit_mc_dropout, "gp": fit_gp,
           "bnn": fit_bnn, "conformal": fit_conformal, "cqr": fit_cqr}
