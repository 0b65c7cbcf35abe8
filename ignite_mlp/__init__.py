"""ignite_mlp: the tutorial's CIFAR-10 multi-layer perceptron, trained by PyTorch-Ignite engines."""

from ignite_mlp.config import TrainConfig
from ignite_mlp.errors import UserError
from ignite_mlp.model import MLP
from ignite_mlp.run import RunContext, RunResult, train

__all__ = ["MLP", "RunContext", "RunResult", "TrainConfig", "UserError", "train"]
__version__ = "0.1.0"
