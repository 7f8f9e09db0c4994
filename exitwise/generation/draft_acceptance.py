r"""How likely a draft token is to be accepted, from the draft's confidence.

Adaptive drafting stops a round at the first draft token whose confidence is below a
threshold (Hugging Face's ``assistant_confidence_threshold``, SpecDec++'s stop rule). The
confidence an engine reads is the draft exit's softmax probability of its own token (its
maximum probability under greedy decoding), which an early exit states too high or too low.
:class:`AcceptanceCalibration` fits, for every draft exit :math:`d`, the probability that the
draft's token is accepted (equals the last exit's argmax) given that confidence:
isotonic regression (:class:`exitwise.calibrate.Isotonic`) on a calibration split, with the
last exit's argmax as the label. The map is monotone, so "stop when the acceptance probability
is below :math:`q`" is "stop when the raw confidence is below :math:`\tau_d(q)`", the smallest
confidence whose calibrated acceptance reaches :math:`q`: a number an engine can be given.
:meth:`AcceptanceCalibration.calibration_error` scores the map on another split (binned ECE
of the calibrated acceptance against the acceptance rate).
"""

from __future__ import annotations

import math

import torch

from exitwise._checks import check_int
from exitwise.data import ExitOutputs

__all__ = ["AcceptanceCalibration", "draft_confidence"]


def draft_confidence(outputs: ExitOutputs) -> torch.Tensor:
    """Each draft exit's confidence in its own token, ``[N, E - 1]`` float64: the maximum
    softmax probability (what ``ConfidenceCriteria`` reads under greedy decoding).

    Examples
    --------
    >>> import torch
    >>> out = ExitOutputs(torch.tensor([[[0.0, 0.0], [0.0, 5.0]]]))
    >>> draft_confidence(out).tolist()
    [[0.5]]
    """
    from exitwise.signals import compute_signal

    return compute_signal(outputs, "max_probability")[:, :-1].to(torch.float64)


def _confidence_and_acceptance(outputs: ExitOutputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Each draft exit's confidence and whether its token is accepted (equals the last
    exit's argmax), ``[N, E - 1]`` each; exact on rest columns (``reduce="fixed:K"``)."""
    if outputs.num_exits < 2:
        raise ValueError("Drafting needs at least 2 exits (a draft and the last).")
    pred = outputs.predictions()
    return draft_confidence(outputs), pred[:, :-1] == pred[:, -1:]


class AcceptanceCalibration:
    """Per draft exit, P(draft token accepted | draft confidence), isotonic.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> z = torch.randn(400, 3, 4, generator=g) * 2
    >>> z[:, 0] += z[:, 2]  # the draft exit leans towards the last exit
    >>> cal = AcceptanceCalibration.fit(ExitOutputs(z))
    >>> out = ExitOutputs(z)
    >>> p = cal.probability(draft_confidence(out))
    >>> tuple(p.shape), bool(((p >= 0) & (p <= 1)).all())
    ((400, 2), True)
    >>> tau = cal.confidence_threshold(0.5, draft_exit=0)
    >>> round(tau, 3), round(float(cal.probability(torch.tensor([[tau, tau]]))[0, 0]), 3)
    (0.856, 0.5)
    """

    def __init__(self, calibrator) -> None:
        self.calibrator = calibrator
        self.num_drafts = int(calibrator.num_exits_)

    @classmethod
    def fit(cls, outputs: ExitOutputs) -> AcceptanceCalibration:
        """Fit on a calibration split (token-level outputs; labels are not used)."""
        from exitwise.calibrate import Isotonic

        return cls(Isotonic().fit_pairs(*_confidence_and_acceptance(outputs)))

    def probability(self, confidence: torch.Tensor) -> torch.Tensor:
        """Calibrated acceptance ``[N, E - 1]`` of raw draft confidences ``[N, E - 1]``."""
        confidence = torch.as_tensor(confidence, dtype=torch.float64)
        if confidence.ndim != 2 or confidence.shape[1] != self.num_drafts:
            raise ValueError(
                f"Expected `confidence` of shape [N, {self.num_drafts}], got "
                f"{tuple(confidence.shape)}."
            )
        columns = [
            self.calibrator.confidence_map(confidence[:, d], exit=d) for d in range(self.num_drafts)
        ]
        return torch.stack(columns, dim=1)

    def confidence_threshold(self, probability: float, draft_exit: int) -> float:
        """The smallest raw confidence whose calibrated acceptance is at least
        ``probability`` (``inf`` if none is: every draft token then stops its round), found
        by bisection on the monotone map to 1e-12."""
        if isinstance(probability, bool) or not isinstance(probability, (int, float)):
            raise TypeError(f"Expected `probability` to be a float, got {probability!r}.")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"Expected `probability` in [0, 1], got {probability!r}.")
        d = check_int(draft_exit, "draft_exit", minimum=0)
        if d >= self.num_drafts:
            raise ValueError(f"Expected `draft_exit` < {self.num_drafts}, got {d}.")

        def g(x: float) -> float:
            return float(self.calibrator.confidence_map(torch.tensor([x]), exit=d)[0])

        if g(0.0) >= probability:
            return 0.0
        if g(1.0) < probability:
            return math.inf
        low, high = 0.0, 1.0
        while high - low > 1e-12:
            mid = 0.5 * (low + high)
            low, high = (low, mid) if g(mid) >= probability else (mid, high)
        return high

    def calibration_error(self, outputs: ExitOutputs, n_bins: int = 15) -> torch.Tensor:
        """ECE ``[E - 1]`` of the calibrated acceptance on ``outputs`` (another split): the
        binned gap between :meth:`probability` and the acceptance rate."""
        from exitwise.metrics.binning import calibration_error_from_confidence

        confidence, accepted = _confidence_and_acceptance(outputs)
        return calibration_error_from_confidence(self.probability(confidence), accepted, n_bins)
