"""A learned halting network: the probability that an exit's answer is right.

BERxiT's learning-to-exit module, CALM's meta classifier and PonderNet-style halting all
learn, from what is known at exit ``e`` (without looking ahead), whether stopping there is
safe. :class:`HaltingNetwork` is a small MLP shared by all exits over per-exit features:
top-label confidence, margin, normalised entropy, agreement with the previous exit, PABEE's
run length, the exit's relative depth, and optionally user features (e.g. pooled hidden
states). It is trained with binary cross-entropy over all exits, early-stopped on an
internal validation split, and (by default) followed by a per-exit isotonic map fitted on
that validation split so its probabilities are calibrated. ``predict_proba`` ``[N, E]`` is a
confidence signal for the exit policies.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import torch
from torch import nn

from exitwise import signals
from exitwise._checks import as_tensor, check_choice, check_int, check_open_unit
from exitwise.calibrate._estimator import FittedEstimator
from exitwise.calibrate._toplabel import interpolate
from exitwise.calibrate.base import _as_batched
from exitwise.calibrate.binning import _fit_isotonic
from exitwise.exceptions import ConvergenceWarning

__all__ = ["HaltingNetwork", "halting_features"]

# fitted attributes stored as they are (the weights and isotonic maps are handled apart)
_PLAIN_STATE = (
    "num_exits_",
    "num_classes_",
    "num_features_",
    "feature_mean_",
    "feature_std_",
    "epochs_",
    "validation_loss_",
)

FEATURE_NAMES = (
    "max_probability",
    "margin",
    "normalized_entropy",
    "agrees_with_previous",
    "run_length",
    "relative_depth",
)


def halting_features(logits: torch.Tensor) -> torch.Tensor:
    """Per-exit features ``[N, E, 6]`` (float32) computed without looking ahead.

    Every feature but the depth is a signal of :mod:`exitwise.signals` (their one owner).
    """
    n, e = logits.shape[:2]
    depth = torch.linspace(0.0, 1.0, e, dtype=torch.float64, device=logits.device)
    feats = [
        signals.max_probability(logits),
        signals.margin(logits),
        1.0 - signals.normalized_entropy_confidence(logits),
        signals.agreement_with_previous(logits),
        signals.patience(logits) / max(1, e - 1),
        depth.expand(n, e),
    ]
    return torch.stack(feats, dim=-1).float()


class _MLP(nn.Module):
    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class HaltingNetwork(FittedEstimator):
    """Learned probability that each exit's answer is right (or equals the final answer).

    A *signal provider*, not a calibrator: it does not change class probabilities, it scores
    whether to stop (``predict_proba`` ``[N, E]``; pass the fitted network wherever a signal
    is accepted). It shares the estimator contract (parameters, not-fitted check, JSON +
    safetensors files) with the calibrators.

    Parameters
    ----------
    target : {"correct", "consistent"}, default="correct"
        ``"correct"``: the exit's prediction equals the label. ``"consistent"``: it equals
        the last exit's prediction (needs no labels, as in CALM).
    hidden : int, default=32
    max_epochs : int, default=300
    patience : int, default=20
        Early stopping: epochs without a better validation loss.
    learning_rate : float, default=1e-2
    validation_fraction : float, default=0.25
    isotonic : bool, default=True
        Fit a per-exit isotonic map of the network's output on the validation split.
    seed : int, default=0
        Seeds the split and the initialisation (the global RNG is left untouched).

    Attributes
    ----------
    state_dict_ : dict of tensors
        Network weights. Also ``feature_mean_``, ``feature_std_``, ``epochs_``,
        ``validation_loss_``.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> halt = HaltingNetwork(max_epochs=30).fit(cal)
    >>> halt.predict_proba(test).shape
    torch.Size([5000, 4])
    """

    def __init__(
        self,
        target: Literal["correct", "consistent"] = "correct",
        hidden: int = 32,
        max_epochs: int = 300,
        patience: int = 20,
        learning_rate: float = 1e-2,
        validation_fraction: float = 0.25,
        isotonic: bool = True,
        seed: int = 0,
    ) -> None:
        self.target = target
        self.hidden = hidden
        self.max_epochs = max_epochs
        self.patience = patience
        self.learning_rate = learning_rate
        self.validation_fraction = validation_fraction
        self.isotonic = isotonic
        self.seed = seed

    def fit(self, outputs: Any, labels: Any = None, features: Any = None) -> HaltingNetwork:
        """Train on a calibration split. ``features``: optional extra ``[N, E, F]`` inputs."""
        check_choice(self.target, "target", ("correct", "consistent"))
        logits, y, _, _ = _as_batched(outputs, labels, need_labels=self.target == "correct")
        n, e, _ = logits.shape
        check_int(self.hidden, "hidden", minimum=1)
        check_int(self.max_epochs, "max_epochs", minimum=1)
        check_int(self.patience, "patience", minimum=1)
        check_open_unit(self.validation_fraction, "validation_fraction")
        x = self._features(logits, features)
        pred = logits.argmax(-1)
        goal = (pred == y[:, None]) if self.target == "correct" else (pred == pred[:, -1:])
        goal = goal.to(torch.float32)
        n_val = max(1, round(self.validation_fraction * n))
        if n - n_val < 1:
            raise ValueError(f"Expected at least 2 samples to fit HaltingNetwork, got {n}.")
        gen = torch.Generator().manual_seed(int(self.seed))
        perm = torch.randperm(n, generator=gen).to(logits.device)
        val, train = perm[:n_val], perm[n_val:]
        mean = x[train].reshape(-1, x.shape[-1]).mean(0)
        std = x[train].reshape(-1, x.shape[-1]).std(0).clamp(min=1e-6)
        xs = (x - mean) / std
        model, best_state, best, epochs = self._train(xs, goal, train, val, gen)
        model.load_state_dict(best_state)
        self.num_exits_ = e
        self.num_classes_ = int(logits.shape[2])
        self.num_features_ = int(x.shape[-1])
        self.state_dict_ = {k: v.cpu() for k, v in best_state.items()}
        self.feature_mean_ = mean.cpu()
        self.feature_std_ = std.cpu()
        self.epochs_ = epochs
        self.validation_loss_ = best
        self.isotonic_maps_ = []
        if self.isotonic:
            with torch.no_grad():
                raw = torch.sigmoid(model(xs[val])).double().cpu().numpy()
            g = goal[val].double().cpu().numpy()
            self.isotonic_maps_ = [_fit_isotonic(raw[:, j], g[:, j]) for j in range(e)]
        return self

    def _train(
        self,
        xs: torch.Tensor,
        goal: torch.Tensor,
        train: torch.Tensor,
        val: torch.Tensor,
        gen: torch.Generator,
    ) -> tuple[_MLP, dict[str, torch.Tensor], float, int]:
        """Adam on the BCE over all exits, early-stopped on the validation rows; returns the
        model, its best weights, the best validation loss and the epochs run."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed))
            model = _MLP(xs.shape[-1], self.hidden).to(xs.device)
        opt = torch.optim.Adam(model.parameters(), lr=self.learning_rate)
        loss_fn = nn.BCEWithLogitsLoss()
        best, best_state, stale, epochs = math.inf, None, 0, 0
        batch = 4096
        for epochs in range(1, self.max_epochs + 1):  # noqa: B007 - reported below
            model.train()
            order = train[torch.randperm(train.numel(), generator=gen).to(xs.device)]
            for i in range(0, order.numel(), batch):
                rows = order[i : i + batch]
                loss = loss_fn(model(xs[rows]), goal[rows])
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                val_loss = float(loss_fn(model(xs[val]), goal[val]))
            if val_loss < best - 1e-6:
                best, stale = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= self.patience:
                    break
        else:
            warnings.warn(
                f"HaltingNetwork stopped at max_epochs={self.max_epochs} while the validation "
                "loss was still improving.",
                ConvergenceWarning,
                stacklevel=3,
            )
        return model, best_state, best, epochs

    def _features(self, logits: torch.Tensor, features: Any) -> torch.Tensor:
        x = halting_features(logits)
        if features is not None:
            extra = as_tensor(features, "features", device=logits.device).float()
            if extra.ndim != 3 or extra.shape[:2] != logits.shape[:2]:
                raise ValueError(
                    f"Expected `features` of shape [N, E, F] = [{logits.shape[0]}, "
                    f"{logits.shape[1]}, F], got {list(extra.shape)}."
                )
            x = torch.cat([x, extra], dim=-1)
        return x

    def predict_proba(self, outputs: Any, features: Any = None) -> torch.Tensor:
        """Probability ``[N, E]`` that each exit's answer is right: a confidence signal."""
        self._check_fitted()
        logits, _, _, _ = _as_batched(outputs, None, need_labels=False)
        x = self._features(logits, features)
        if x.shape[1] != self.num_exits_ or x.shape[-1] != self.num_features_:
            raise ValueError(
                f"HaltingNetwork was fitted on {self.num_exits_} exits x {self.num_features_} "
                f"features, got {x.shape[1]} x {x.shape[-1]}."
            )
        model = _MLP(self.num_features_, self.hidden).to(x.device)
        model.load_state_dict({k: v.to(x.device) for k, v in self.state_dict_.items()})
        model.eval()
        xs = (x - self.feature_mean_.to(x.device)) / self.feature_std_.to(x.device)
        with torch.no_grad():
            raw = torch.sigmoid(model(xs)).double()
        if self.isotonic_maps_:
            raw = torch.stack(
                [interpolate(raw[:, j], m["x"], m["y"]) for j, m in enumerate(self.isotonic_maps_)],
                dim=1,
            )
        return raw

    def __call__(self, outputs: Any) -> torch.Tensor:
        """So a fitted network can be passed as a signal: ``compute_signal(out, halt)``."""
        return self.predict_proba(outputs)

    def calibration_error(self, outputs: Any, labels: Any = None, n_bins: int = 15) -> torch.Tensor:
        """ECE ``[E]`` of ``predict_proba`` against the target on (held-out) data."""
        from exitwise.metrics.binning import calibration_error_from_confidence

        logits, y, _, _ = _as_batched(outputs, labels, need_labels=self.target == "correct")
        q = self.predict_proba(logits)
        pred = logits.argmax(-1)
        goal = (pred == y[:, None]) if self.target == "correct" else (pred == pred[:, -1:])
        return calibration_error_from_confidence(q, goal, n_bins)

    def _state(self) -> dict[str, Any]:
        state = {key: getattr(self, key) for key in _PLAIN_STATE}
        names = sorted(self.state_dict_)
        state["weight_names_"] = names
        state["weights_"] = [self.state_dict_[k] for k in names]
        state["isotonic_x_"] = [m["x"] for m in self.isotonic_maps_]
        state["isotonic_y_"] = [m["y"] for m in self.isotonic_maps_]
        return state

    def _set_state(self, state: dict[str, Any]) -> None:
        for key in _PLAIN_STATE:
            setattr(self, key, state[key])
        self.state_dict_ = dict(zip(state["weight_names_"], state["weights_"], strict=True))
        xs = state.get("isotonic_x_") or []
        ys = state.get("isotonic_y_") or []
        self.isotonic_maps_ = [{"x": a, "y": b} for a, b in zip(xs, ys, strict=True)]
