"""How often the signal is computed: by ``build_report`` (two splits), by one tuning call,
and by a tuning call followed by ``evaluate`` on the same split (issue 20, item 1), with the
report's wall time. Runs on the code it is given (``PYTHONPATH=OLD_CHECKOUT`` for a
before/after comparison; the old API had no ``ExitScores``).

    python benchmarks/signal_counts.py
"""

from __future__ import annotations

import tempfile
import time

import exitwise.signals as signals
from exitwise.datasets import load_default

calls = {"n": 0}
_original = signals._scores_of_code


def _counting(code, logits):
    calls["n"] += 1
    return _original(code, logits)


signals._scores_of_code = _counting


def main() -> None:
    import exitwise.policies as policies
    from exitwise.report import build_report

    out = load_default()
    cal, _ = out.split(0.5, seed=0)
    calls["n"] = 0
    policies.tune_for_accuracy(cal, "max_probability", 0.99, relative=True)
    print(f"one tune_for_accuracy call: {calls['n']} signal computation(s)")
    calls["n"] = 0
    if hasattr(policies, "ExitScores"):  # the scores are computed once and passed along
        scores = policies.ExitScores(cal, "max_probability")
        tuned = policies.tune_for_accuracy(scores, target=0.99, relative=True)
        policies.evaluate(tuned.policy, scores)
    else:
        tuned = policies.tune_for_accuracy(cal, "max_probability", 0.99, relative=True)
        policies.evaluate(tuned.policy, cal)
    print(f"tune_for_accuracy then evaluate on the same split: {calls['n']}")
    calls["n"] = 0
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        build_report(out, d, n_resamples=50)
        took = time.perf_counter() - start
    print(f"build_report (two splits): {calls['n']} ({took:.1f} s)")


if __name__ == "__main__":
    main()
