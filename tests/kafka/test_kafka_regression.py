"""Regression in the Kafka pipeline: not yet supported, and refused at the edge with one clear error.

``evaluate`` and ``simulate`` learn float labels (tests/evaluation/test_run_regression.py,
tests/sim/test_simulator_regression.py); the node service, its records and codecs carry class
indices only, so a regression node or demo stops at start instead of dead-lettering every reading.
"""

import pytest

from streamlearn.cli import main
from streamlearn.errors import ConfigError
from streamlearn.learners import TorchLearner
from streamlearn.node.core import NodeCore


@pytest.mark.parametrize("argv", [
    ["node", "--id", "0", "--task", "regression", "--max-seconds", "1"],
    ["demo", "--task", "regression", "--duration", "1"],
])
def test_node_and_demo_refuse_regression_at_start(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "regression is not yet supported by the node service" in err
    assert "evaluate" in err and "simulate" in err


def test_node_core_refuses_a_regression_learner():
    learner = TorchLearner("logreg", n_features=2, loss="squared", seed=0, device="cpu")
    with pytest.raises(ConfigError, match="regression is not yet supported by the node service"):
        NodeCore(learner, [], protocol="nosync")
