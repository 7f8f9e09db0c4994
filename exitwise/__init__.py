"""exitwise: calibrate early-exit networks, choose exit policies for an SLA, show the evidence.

Examples
--------
>>> import torch, exitwise
>>> out = exitwise.ExitOutputs(torch.randn(8, 3, 4), labels=torch.arange(8) % 4)
>>> exitwise.metrics.expected_calibration_error(out.probs(), out.labels).shape
torch.Size([3])
"""

from exitwise import metrics
from exitwise.data import ExitOutputs
from exitwise.data_shards import ShardedOutputs, load
from exitwise.exceptions import ConvergenceWarning, InfeasibleTargetError, UndefinedMetricWarning

__version__ = "0.1.0"

__all__ = [
    "ConvergenceWarning",
    "ExitOutputs",
    "InfeasibleTargetError",
    "ShardedOutputs",
    "UndefinedMetricWarning",
    "__version__",
    "load",
    "metrics",
]
