"""The node service restarts a learner's step-size schedule (lr_decay) as the simulator does."""

from __future__ import annotations

import time

import pytest
import torch

from streamlearn.kafka.topics import ensure_topics
from streamlearn.learners import TorchLearner
from streamlearn.sim import NodeData, simulate

from test_kafka_faults_helpers import CLASSES, FEATURES, Threads, batches, make_data, publish

N = 3000


def test_node_restarts_its_step_size_on_a_rise_like_the_simulator(broker, settings, prefix):
    ensure_topics(broker.bootstrap, prefix, 1, settings=settings)
    X, y = make_data(N, 7, flip_at=N // 2)  # labels swapped at sample 1500
    publish(broker.bootstrap, settings, prefix, {0: batches(X, y, chunk=20)})  # whole mini-batches only
    threads = Threads(broker.bootstrap, settings, prefix)
    try:
        svc = threads.node(0, protocol="nosync", detector="adwin", learner_params={"lr": 0.5, "lr_decay": 20})
        deadline = time.monotonic() + 60
        while svc.status().get("samples") != N and time.monotonic() < deadline:
            time.sleep(0.1)
        assert svc.status().get("samples") == N
        learner = svc.learner_
        template = TorchLearner("logreg", lr=0.5, lr_decay=20, seed=0, device="cpu")
        data = NodeData(X=X[None], y=y[None], classes=CLASSES, feature_names=FEATURES)
        res = simulate(data, template, "nosync", batch_size=10, progress=False, detector="adwin")
        assert res.restarts and all(N // 2 <= step * 10 < N // 2 + 500 for step, _ in res.restarts)
        assert (learner.n_steps_, learner.t_reset_) == (N // 10, res.restarts[-1][0])
        torch.testing.assert_close(learner.get_flat().cpu(), res.final_models[0], rtol=1e-4, atol=1e-5)
        assert svc.status()["accuracy"] == pytest.approx(res.correct[0].mean())
    finally:
        threads.stop()
