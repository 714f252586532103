"""Online classifiers with one interface; the averageable ones expose their model as one flat tensor.

- :class:`TorchLearner`: logreg / mlp / cnn in torch, parameters in one flat float32 tensor,
  plus a functional form for the vectorized simulator.
- :class:`RiverLinear`: river's linear classifiers, weights + intercept as a flat vector.
- :class:`RiverLocal`: any other river classifier, local only (not averageable).
- :func:`make_learner` / ``LEARNERS`` / :func:`is_averageable`: the registry by name.
- :mod:`~streamlearn.learners.preprocessing`: :class:`OnlineScaler`, :class:`OneHotEncoder`.
"""

from streamlearn.learners.base import NotInitializedError
from streamlearn.learners.preprocessing import OneHotEncoder, OnlineScaler
from streamlearn.learners.registry import LEARNERS, is_averageable, make_learner
from streamlearn.learners.river_linear import RiverLinear
from streamlearn.learners.river_local import RiverLocal
from streamlearn.learners.torch_learner import TorchLearner

__all__ = [
    "LEARNERS",
    "NotInitializedError",
    "OneHotEncoder",
    "OnlineScaler",
    "RiverLinear",
    "RiverLocal",
    "TorchLearner",
    "is_averageable",
    "make_learner",
]
