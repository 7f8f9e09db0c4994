r"""Shared machinery of calibrators that remap the top-label confidence of each exit (or,
in ``"one_vs_rest"`` mode, each class's probability).

Such a calibrator learns a monotone map :math:`q = g(p_{\max})` per exit from (confidence,
correct) pairs. Applying it sets the top class to :math:`q` and rescales the other classes by
:math:`(1 - q) / (1 - p_{\max})`, so rows still sum to 1. To keep the argmax, :math:`q` is
raised where needed to :math:`p_{(2)} / (1 - p_{\max} + p_{(2)})` (the value at which the
rescaled runner-up would tie), and it is kept at most :math:`1 - 10^{-12}` so every
log-probability stays finite. Everything is computed from log-probabilities in float64.

In ``"one_vs_rest"`` mode (for calibrators with a ``mode`` parameter) one map per class is
fitted on (probability of the class, is the label) pairs; the mapped values are floored at
``1e-12`` and rows renormalised, so the argmax may change.

In a ``torch.distributed`` group of several processes each rank passes its shard and every
rank fits the maps on all of them: the top-label pairs (16 bytes per sample and exit) are
gathered in rank order; in ``"one_vs_rest"`` mode the logits themselves.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from exitwise._checks import check_choice
from exitwise._distributed import all_gather_rows, group_active
from exitwise.calibrate.base import Calibrator

MODES = ("top_label", "one_vs_rest")
_MAX_CONFIDENCE = 1.0 - 1e-12


def top_label_pairs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence and hit per sample and exit, float64 numpy ``[N, E]``."""
    lp = torch.log_softmax(logits.to(torch.float64), dim=-1)
    top, pred = lp.max(dim=-1)
    hit = (pred == labels[:, None]).to(torch.float64)
    return top.exp().cpu().numpy(), hit.cpu().numpy()


def apply_top_label(logits: torch.Tensor, new_confidence) -> torch.Tensor:
    """Log-probabilities ``[N, E, C]`` with the top class set to ``new_confidence(p_max)``.

    ``new_confidence`` maps a float64 tensor ``[N, E]`` of top-label confidences to the
    calibrated ones.
    """
    lp = torch.log_softmax(logits.to(torch.float64), dim=-1)
    top2 = lp.topk(2, dim=-1)
    lp_top, lp_second = top2.values[..., 0], top2.values[..., 1]
    is_top = torch.zeros_like(lp, dtype=torch.bool).scatter_(-1, top2.indices[..., :1], True)
    log_rest = torch.logsumexp(lp.masked_fill(is_top, -torch.inf), dim=-1)  # log(1 - p_max)
    q = new_confidence(lp_top.exp()).to(torch.float64)
    lower = torch.exp(lp_second - torch.logaddexp(log_rest, lp_second)) * (1 + 1e-9)
    q = torch.minimum(torch.maximum(q, lower), torch.full_like(q, _MAX_CONFIDENCE))
    shift = torch.log1p(-q) - log_rest
    out = lp + shift.unsqueeze(-1)
    return torch.where(is_top, q.log().unsqueeze(-1), out)


def _every_rank(conf: Any, hit: Any, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Top-label pairs ``[N, E]`` (tensors or arrays) as float64 numpy arrays: in a process
    group of several processes, every rank's pairs in rank order, gathered on ``device`` (NCCL
    carries CUDA tensors only)."""
    pairs = torch.stack([torch.as_tensor(a).to(torch.float64).cpu() for a in (conf, hit)], -1)
    if group_active():
        pairs = all_gather_rows(pairs.to(device)).cpu()
    return pairs[..., 0].numpy(), pairs[..., 1].numpy()


def interpolate(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """``np.interp`` in torch: piecewise-linear through ``(xp, fp)``, constant outside."""
    xp = xp.to(device=x.device, dtype=torch.float64)
    fp = fp.to(device=x.device, dtype=torch.float64)
    if xp.numel() == 1:
        return fp.expand_as(x).clone()
    idx = torch.searchsorted(xp, x.contiguous(), right=True).clamp(1, xp.numel() - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    y0, y1 = fp[idx - 1], fp[idx]
    width = x1 - x0
    frac = torch.where(width > 0, (x - x0) / torch.where(width > 0, width, 1.0), 0.0)
    out = y0 + frac.clamp(0.0, 1.0) * (y1 - y0)
    out = torch.where(x <= xp[0], fp[0], out)
    return torch.where(x >= xp[-1], fp[-1], out)


class TopLabelCalibrator(Calibrator, abstract=True):
    """Fits ``_fit_exit(confidence, hit) -> state`` per exit (per exit and class in
    ``"one_vs_rest"`` mode); applies ``_apply(state, confidence)`` (or ``_map_exit``)."""

    def _fit_exit(self, confidence: np.ndarray, hit: np.ndarray) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # pragma: no cover

    def _apply(self, state: dict[str, torch.Tensor], confidence: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def _map_exit(self, e: int, confidence: torch.Tensor) -> torch.Tensor:
        return self._apply(self.exit_maps_[e], confidence)

    def _mode(self) -> str:
        mode = getattr(self, "mode", "top_label")
        check_choice(mode, "mode", MODES)
        return mode

    def _fit(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if self._mode() == "one_vs_rest":
            if group_active():  # every class's probabilities, every rank's: gathered whole
                logits, labels = all_gather_rows(logits), all_gather_rows(labels)
            probs = torch.softmax(logits.to(torch.float64), dim=-1).cpu().numpy()
            onehot = np.eye(logits.shape[2])[labels.cpu().numpy()]
            self.exit_maps_ = []
            for e in range(probs.shape[1]):
                per_class = [
                    self._fit_exit(probs[:, e, c], onehot[:, c]) for c in range(probs.shape[2])
                ]
                self.exit_maps_.append(
                    {f"{key}_class{c}": v for c, m in enumerate(per_class) for key, v in m.items()}
                )
            return
        self._fit_maps(*_every_rank(*top_label_pairs(logits, labels), logits.device))

    def _fit_maps(self, conf: np.ndarray, hit: np.ndarray) -> None:
        """One map per exit from top-label pairs ``[N, E]``."""
        self.exit_maps_ = [self._fit_exit(conf[:, e], hit[:, e]) for e in range(conf.shape[1])]

    def fit_pairs(self, confidence: torch.Tensor, hit: torch.Tensor) -> TopLabelCalibrator:
        """Fit every exit's map on top-label pairs directly: confidences ``[N, E]`` in
        [0, 1] and hits ``[N, E]`` (bool or 0/1), for rows that are not full distributions
        (:attr:`ExitOutputs.rest_columns <exitwise.ExitOutputs.rest_columns>`). Then only
        :meth:`confidence_map` applies (``transform`` needs a fit on logits).

        Examples
        --------
        >>> from exitwise.calibrate import Isotonic
        >>> conf = torch.tensor([[0.2], [0.4], [0.6], [0.8]])
        >>> hit = torch.tensor([[False], [True], [False], [True]])
        >>> Isotonic().fit_pairs(conf, hit).confidence_map(torch.tensor([0.5])).tolist()
        [0.5]
        """
        check_choice(self._mode(), "mode", ("top_label",))
        conf = torch.as_tensor(confidence).to(torch.float64)
        hits = torch.as_tensor(hit).to(torch.float64)
        if conf.ndim != 2 or hits.shape != conf.shape:
            raise ValueError(
                f"Expected `confidence` and `hit` of one shape [N, E], got {tuple(conf.shape)} "
                f"and {tuple(hits.shape)}."
            )
        low, high = (float(v) for v in torch.aminmax(conf))
        if not (low >= 0.0 and high <= 1.0):  # NaN fails both
            raise ValueError(f"Expected `confidence` in [0, 1], got [{low:.4g}, {high:.4g}].")
        c, h = _every_rank(conf, hits, conf.device)
        if c.shape[0] < self._min_samples:  # every rank's pairs count, as in fit
            raise ValueError(
                f"Expected at least {self._min_samples} pairs to fit {type(self).__name__}, "
                f"got {c.shape[0]}."
            )
        self.num_exits_, self.num_classes_ = int(conf.shape[1]), None
        self._fit_maps(c, h)
        return self

    def _class_state(self, e: int, c: int) -> dict[str, torch.Tensor]:
        parts = (k.rpartition("_class") for k in self.exit_maps_[e])
        return {
            key: self.exit_maps_[e][f"{key}_class{cls}"] for key, _, cls in parts if cls == str(c)
        }

    def _transform(self, logits: torch.Tensor) -> torch.Tensor:
        if self._mode() == "one_vs_rest":
            probs = torch.softmax(logits.to(torch.float64), dim=-1)
            out = torch.empty_like(probs)
            for e in range(probs.shape[1]):
                for c in range(probs.shape[2]):
                    out[:, e, c] = self._apply(self._class_state(e, c), probs[:, e, c])
            out = out.clamp(min=1e-12)
            return torch.log(out / out.sum(dim=-1, keepdim=True))

        def new_confidence(conf: torch.Tensor) -> torch.Tensor:
            return torch.stack([self._map_exit(e, conf[:, e]) for e in range(conf.shape[1])], dim=1)

        return apply_top_label(logits, new_confidence)

    def confidence_map(self, confidence, exit: int = 0) -> torch.Tensor:
        """The fitted map of exit ``exit`` evaluated at ``confidence`` values."""
        self._check_fitted()
        x = torch.as_tensor(confidence, dtype=torch.float64)
        return self._map_exit(exit, x)

    # state: a list of dicts of tensors, stored as flat tensors per exit
    def _state(self) -> dict:
        state = {"num_exits_": self.num_exits_, "num_classes_": self.num_classes_}
        keys = sorted(self.exit_maps_[0]) if self.exit_maps_ else []
        state["map_keys_"] = keys
        for key in keys:
            state[f"map_{key}_"] = [m[key] for m in self.exit_maps_]
        return state

    def _set_state(self, state: dict) -> None:
        self.num_exits_ = state["num_exits_"]
        self.num_classes_ = state["num_classes_"]
        keys = state["map_keys_"]
        self.exit_maps_ = [
            {key: state[f"map_{key}_"][e] for key in keys} for e in range(self.num_exits_)
        ]
