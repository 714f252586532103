"""The sync service's model screen (pure logic): the norm limit spans a model's parameters, never its buffers."""

import numpy as np

from streamlearn.kafka.sync_models import ModelScreen
from streamlearn.kafka.wire import SyncMessage


def _model(params: float, buffers: float) -> np.ndarray:
    # 3 parameters, then 2 buffers (a scaler's statistics, in the data's units: they grow with the samples seen)
    return np.array([params] * 3 + [buffers] * 2, dtype=np.float32)


def test_a_report_in_the_poll_of_its_join_is_screened_over_the_parameters_its_join_declared():
    # A node with samples waiting reports right after its first step: its join and that report come in one
    # poll, screened before the join makes the protocol. The report was screened over its whole vector, and a
    # scaler's statistics above --max-norm got a good model refused (and dead-lettered).
    screen = ModelScreen(max_norm=1e6)
    join = SyncMessage(kind="join", node=0, d=5, n_params=3, model=_model(1.0, 1e7))
    report = SyncMessage(kind="report", node=0, step=1, model=_model(2.0, 2e7))
    assert screen.screen(join, None, None) is None
    assert screen.screen(report, None, None) is None
    # parameters above the limit are still refused, and a node that declared nothing is screened whole
    assert screen.screen(SyncMessage(kind="report", node=0, step=1, model=_model(1e7, 0.0)), None, None)[0] == "norm"
    assert screen.screen(SyncMessage(kind="report", node=1, step=1, model=_model(1.0, 1e7)), None, None)[0] == "norm"


def test_joins_remembered_before_the_protocol_are_bounded():
    screen = ModelScreen(max_norm=1e6)
    for node in range(10_000):  # hostile joins before any protocol exists
        screen.screen(SyncMessage(kind="join", node=node, d=5, n_params=3, model=_model(1.0, 0.0)), None, None)
    assert len(screen._declared) <= 4096
