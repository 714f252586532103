"""The node service's hot-path helpers are the node core's (tested in tests/node/test_node_scoring.py);
their old names in streamlearn.kafka.node stay for callers."""

from streamlearn.kafka import node
from streamlearn.node import scoring


def test_the_old_names_are_the_core_helpers():
    assert (node._score, node._score_step, node._mean_loss, node._live_flat, node._declared_proba,
            node._early_scores) == (scoring.score, scoring.score_step, scoring.mean_loss, scoring.live_flat,
                                    scoring.declared_proba, scoring.early_scores)
