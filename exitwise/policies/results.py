"""One result for "a policy chosen from data": :class:`PolicyResult`.

Every tuner (``tune``, ``tune_for_accuracy``, ``tune_for_budget``, ``tune_for_latency``, with
or without ``confidence``), :func:`~exitwise.policies.risk_controlled_threshold`,
:func:`~exitwise.policies.certify` and :func:`~exitwise.policies.geometric_budget_policy`
return it. Its parts are typed:

* ``policy``: the chosen :class:`~exitwise.policies.ThresholdPolicy`, or ``None``; then
  ``reason`` says why and ``best_achievable`` what the tuning data allows at best;
* ``evaluation``: an :class:`Evaluation` of the policy on the tuning data (accuracy,
  agreement with the final exit, mean and relative cost, speed-up, exit fractions, cost
  percentiles);
* ``guarantee``: when certified, a :class:`Guarantee` (risks and limits, confidence, unit
  ``"sample"`` or ``"sequence"``, number of units, p-values and their methods);
* ``path``: for Learn-then-Test and Pareto Testing, the tested candidates in testing order
  (:class:`TestingPath`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from exitwise._deprecation import warn_renamed
from exitwise.policies.evaluation import Evaluation

__all__ = ["Evaluation", "Guarantee", "PolicyResult", "TestingPath"]


@dataclass(frozen=True)
class Guarantee:
    """A statistical guarantee: with probability at least ``confidence`` over the
    calibration data, every risk in ``limits`` is at most its limit on new data.

    Attributes
    ----------
    limits : dict
        Risk name -> limit (e.g. ``{"disagreement": 0.05}``; ``"cost"`` as a share of the
        full model's, ``"latency"`` as the share of requests over a latency limit).
    confidence : float
        1 - the failure probability.
    unit : {"sample", "sequence"}
        The statistical unit: i.i.d. samples, or whole sequences (token-level data).
    num_units : int
        How many units the certificate was computed on.
    p_values : dict
        Risk -> p-value of the certified policy.
    p_value_methods : dict
        Risk -> ``"binomial"``, ``"hoeffding_bentkus"`` or ``"wsr"``.
    empirical_risks : dict
        Risk -> its mean on the certifying data.
    procedure : {"learn_then_test", "pareto_testing"}
    vacuous : bool
        The certified policy lets no calibration unit leave early (the full model).

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> from exitwise.policies import risk_controlled_threshold
    >>> g = risk_controlled_threshold(load_default()[:3000], "max_probability", limit=0.05,
    ...                               confidence=0.9).guarantee
    >>> g.limits, g.confidence, g.unit, g.num_units, g.p_values["disagreement"] <= 0.1
    ({'disagreement': 0.05}, 0.9, 'sample', 3000, True)
    """

    limits: dict[str, float]
    confidence: float
    unit: str
    num_units: int
    p_values: dict[str, float]
    p_value_methods: dict[str, str]
    empirical_risks: dict[str, float]
    procedure: str
    vacuous: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON values, for a policy file's context (the monitor reads them)."""
        return asdict(self)

    def __call__(self) -> dict[str, Any]:
        """Deprecated: ``CertifiedPolicy.guarantee()`` was a method; use ``.to_dict()``."""
        warn_renamed("guarantee()", "guarantee.to_dict()")
        return self.to_dict()


@dataclass(frozen=True)
class TestingPath:
    """The candidates a fixed-sequence test walked, in testing order.

    Attributes
    ----------
    thresholds : torch.Tensor
        ``[T]`` shared thresholds (Learn-then-Test) or ``[T, E]`` per-exit vectors (Pareto
        Testing's ordered front).
    p_values : torch.Tensor
        ``[T]``: each candidate's p-value (the largest over its risks), NaN after the stop.
    risks : torch.Tensor
        ``[T]``: its empirical risk (the first risk's), NaN where not computed.
    early_exit_fraction : torch.Tensor or None
        ``[T]``: share of units that leave before the last exit.
    num_tested : int
        Candidates tested (the passed ones and the one that stopped the walk).
    num_passed : int
    num_optimisation : int
        Units used to build the candidates and their order (0 for a fixed grid).
    """

    __test__ = False  # a result type, not a pytest test class

    thresholds: torch.Tensor
    p_values: torch.Tensor
    risks: torch.Tensor
    early_exit_fraction: torch.Tensor | None
    num_tested: int
    num_passed: int
    num_optimisation: int = 0


# old attribute -> (new spelling, getter); kept one release with a DeprecationWarning
_OLD_ATTRIBUTES: dict[str, tuple[str, Any]] = {
    "achieved": ("evaluation (and guarantee)", lambda r: r._achieved()),
    "threshold": ("shared_threshold", lambda r: r.shared_threshold),
    "empirical_risk": ("path.risks", lambda r: r.path.risks),
    "grid": ("path.thresholds", lambda r: r.path.thresholds),
    "certified_index": ("path (the certified candidate)", lambda r: r._certified_index()),
    "delta": ("guarantee.limits", lambda r: next(iter(r.limits.values()))),
    "epsilon": ("1 - guarantee.confidence", lambda r: 1.0 - r.confidence),
    "empirical_risks": ("guarantee.empirical_risks", lambda r: r.guarantee.empirical_risks),
    "p_value_methods": ("guarantee.p_value_methods", lambda r: r.guarantee.p_value_methods),
    "relative_cost": ("evaluation.relative_cost", lambda r: r._relative_cost()),
    "num_testing": ("guarantee.num_units", lambda r: r.num_units),
    "num_samples": ("guarantee.num_units", lambda r: r.num_units),
    "num_tested": ("path.num_tested", lambda r: r.path.num_tested),
    "num_certified": ("path.num_passed", lambda r: r.path.num_passed),
    "front_size": ("path.thresholds", lambda r: int(r.path.thresholds.shape[0])),
    "early_exit_fraction": ("path.early_exit_fraction", lambda r: r.path.early_exit_fraction),
    "p_values": ("guarantee.p_values or path.p_values", lambda r: r._old_p_values()),
    "num_optimisation": ("path.num_optimisation", lambda r: r.path.num_optimisation),
    "sequence": ("path.thresholds", lambda r: r.path.thresholds),
    "quantiles": ("evaluation.cost_percentiles", lambda r: r._old_quantiles()),
}


@dataclass(frozen=True)
class PolicyResult:
    """A policy chosen from data, or the reason there is none.

    Attributes
    ----------
    policy : ThresholdPolicy or None
        ``None`` when no policy meets the request ("infeasible" is a result, not an error).
    evaluation : Evaluation or None
        The policy on the tuning (calibration) data.
    guarantee : Guarantee or None
        When the policy is certified (``confidence`` given, risk control, Pareto Testing).
    reason : str or None
        Why there is no policy (``None`` when there is one).
    best_achievable : dict
        With no policy: the best values the tuning data allows (e.g. ``accuracy``,
        ``relative_accuracy``, ``relative_cost``, or per risk the least empirical risk and
        the smallest p-value of any tested candidate).
    shared_threshold : float
        The best shared threshold (tuners: the per-exit search starts there; Learn-then-Test:
        the certified threshold). ``inf`` when none.
    path : TestingPath or None
        The fixed-sequence test's candidates (Learn-then-Test, Pareto Testing).
    limits : dict
        What was asked: risk, accuracy or cost name -> limit (also without a guarantee).
    confidence : float or None
    num_units : int
        Samples or sequences the choice was made on.
    unit : {"sample", "sequence"}

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> from exitwise.policies import ExitScores, tune_for_accuracy
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> found = tune_for_accuracy(ExitScores(cal, "margin"), target=0.99, relative=True)
    >>> found.feasible, found.evaluation.speed_up > 1, found.report(test).accuracy > 0.85
    (True, True, True)
    >>> none = tune_for_accuracy(cal, "margin", 0.999, relative=False)
    >>> none.policy is None, none.reason.startswith("no policy meets accuracy >= 0.9990")
    (True, True)
    """

    policy: Any
    evaluation: Evaluation | None
    guarantee: Guarantee | None = None
    reason: str | None = None
    best_achievable: dict[str, float] = field(default_factory=dict)
    shared_threshold: float = math.inf
    path: TestingPath | None = field(default=None, repr=False)
    limits: dict[str, float] = field(default_factory=dict)
    confidence: float | None = None
    num_units: int = 0
    unit: str = "sample"

    def __post_init__(self) -> None:
        if self.policy is None and not self.reason:
            raise ValueError("A PolicyResult without a policy needs a `reason`.")

    def __repr__(self) -> str:
        if self.policy is None:
            return f"PolicyResult(policy=None, reason={self.reason!r})"
        parts = [f"policy={self.policy!r}"]
        if self.evaluation is not None:
            ev = self.evaluation
            if ev.accuracy is not None:
                parts.append(f"accuracy={ev.accuracy:.4f}")
            parts.append(f"relative_cost={ev.relative_cost:.4f}")
        if self.guarantee is not None:
            g = self.guarantee
            limits = ", ".join(f"{k} <= {v:g}" for k, v in g.limits.items())
            parts.append(
                f"guarantee=({limits}; confidence {g.confidence:g}; {g.num_units} {g.unit}s)"
            )
        return f"PolicyResult({', '.join(parts)})"

    @property
    def feasible(self) -> bool:
        """A policy was found."""
        return self.policy is not None

    @property
    def certified(self) -> bool:
        """A policy was found and carries a guarantee."""
        return self.policy is not None and self.guarantee is not None

    @property
    def vacuous(self) -> bool:
        """Certified, but no calibration unit leaves early with it (the full model)."""
        return self.guarantee is not None and self.guarantee.vacuous

    def report(self, data: Any, *, percentiles: Any = None) -> Evaluation:
        """The policy's :class:`Evaluation` on other data (e.g. the held-out split)."""
        if self.policy is None:
            raise ValueError(f"No policy was chosen ({self.reason}); there is nothing to report.")
        from exitwise.policies.evaluate_policies import evaluate_policy

        pct = tuple(self.evaluation.cost_percentiles) if self.evaluation else ()
        return evaluate_policy(self.policy, data, percentiles=percentiles or pct or None)

    def summary(self) -> dict[str, Any]:
        """Every field as JSON values (the CLI's ``--json`` and the report print this)."""
        out: dict[str, Any] = {
            "feasible": self.feasible,
            "policy": None if self.policy is None else self.policy.to_dict(),
            "evaluation": None if self.evaluation is None else self.evaluation.to_dict(),
            "guarantee": None if self.guarantee is None else self.guarantee.to_dict(),
            "limits": dict(self.limits),
            "confidence": self.confidence,
            "unit": self.unit,
            "num_units": self.num_units,
        }
        if self.policy is None:
            out.update(reason=self.reason, best_achievable=dict(self.best_achievable))
        if math.isfinite(self.shared_threshold):
            out["shared_threshold"] = self.shared_threshold
        return out

    # ------------------------------------------------------------------ old spellings
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name not in _OLD_ATTRIBUTES:
            raise AttributeError(f"'PolicyResult' object has no attribute {name!r}")
        new, getter = _OLD_ATTRIBUTES[name]
        warn_renamed(f"PolicyResult.{name}", new)
        return getter(self)

    def _achieved(self) -> dict[str, Any]:
        if self.evaluation is None:
            return {}
        out = self.evaluation.to_dict()
        out["cost_quantiles"] = {k / 100.0: v for k, v in self.evaluation.cost_percentiles.items()}
        if self.guarantee is not None:
            out["p_value"] = max(self.guarantee.p_values.values())
        return out

    def _certified_index(self) -> int | None:
        if self.policy is None or self.path is None or self.path.num_passed == 0:
            return None
        if self.path.thresholds.ndim == 1:
            return int(torch.nonzero(self.path.thresholds == self.shared_threshold)[0, 0])
        return None

    def _relative_cost(self) -> float:
        return math.nan if self.evaluation is None else self.evaluation.relative_cost

    def _old_quantiles(self) -> tuple[float, ...]:
        pct = self.evaluation.cost_percentiles if self.evaluation else {}
        return tuple(p / 100.0 for p in pct)

    def _old_p_values(self) -> Any:
        if self.path is not None and self.path.thresholds.ndim == 1:
            return self.path.p_values
        return {} if self.guarantee is None else dict(self.guarantee.p_values)
