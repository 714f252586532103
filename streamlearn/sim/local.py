"""Simulating learners that cannot be averaged (river classifiers): every node learns on its own.

Such a learner has no flat parameters, so there is nothing to batch into an (m, d) tensor and no
protocol but ``nosync`` applies: the nodes run one after another, test-then-train on the same
mini-batches as :func:`~streamlearn.sim.simulator.simulate`, and give the same :class:`SimResult`.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from streamlearn.errors import ConfigError

__all__ = ["check_local_protocol", "simulate_local"]

_MAX_LOSS = -math.log(1e-15)


def _learner_name(learner) -> str:
    model = getattr(learner, "model", learner)
    return type(model).__name__


def check_local_protocol(learner, protocol) -> None:
    """ConfigError unless ``protocol`` is ``nosync``: a learner without flat parameters cannot be averaged."""
    from streamlearn.sync.spec import parse_spec

    name = protocol if isinstance(protocol, str) else getattr(protocol, "name", repr(protocol))
    if not isinstance(protocol, str) or parse_spec(protocol)[0] != "nosync":
        raise ConfigError(f"learner {_learner_name(learner)}: it cannot be averaged (it has no flat parameters), "
                          f"and protocol {name!r} averages models; use --protocol nosync (every node learns on "
                          f"its own), or an averageable learner (a torch model)")


def simulate_local(data, learner, protocol="nosync", batch_size: int = 10):
    """Run ``data.m`` copies of ``learner`` (a :class:`~streamlearn.learners.RiverLocal`), each on its stream.

    Examples
    --------
    >>> import numpy as np
    >>> from river import naive_bayes
    >>> from streamlearn.learners import RiverLocal
    >>> from streamlearn.sim.simulator import NodeData
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(2, 300, 2)).astype(np.float32)
    >>> data = NodeData(X=X, y=(X.sum(-1) > 0).astype(np.int64), classes=[0, 1], feature_names=["a", "b"])
    >>> res = simulate_local(data, RiverLocal(naive_bayes.GaussianNB()))
    >>> res.accuracy > 0.9, res.transfers, res.d
    (True, 0, 0)
    """
    from streamlearn.sim.simulator import SimResult
    from streamlearn.sync.spec import make_protocol

    check_local_protocol(learner, protocol)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: need an int >= 1, got {batch_size!r}")
    m, n, _ = data.X.shape
    rounds = n // batch_size
    if rounds == 0:
        raise ConfigError(f"batch_size: {batch_size} is more than the {n} samples per node")
    n = rounds * batch_size
    labels = np.array(list(data.classes), dtype=object)
    nodes = [learner.clone({"features": list(data.feature_names), "n_features": None}) for _ in range(m)]
    correct = np.zeros((m, n), dtype=bool)
    losses = np.zeros((m, n), dtype=np.float32)
    t0 = time.perf_counter()
    for i, node in enumerate(nodes):
        for r in range(rounds):
            sl = slice(r * batch_size, (r + 1) * batch_size)
            Xb, yb = data.X[i, sl], labels[data.y[i, sl]]
            P = node.predict_proba_many(Xb)  # columns in node.classes_ order (the labels seen so far)
            if P.shape[1]:
                known = list(node.classes_)
                pred = np.array(known, dtype=object)[P.argmax(axis=1)]
                col = {c: j for j, c in enumerate(known)}
                p_true = np.array([P[k, col[v]] if v in col else 0.0 for k, v in enumerate(yb)])
            else:
                pred, p_true = np.full(len(yb), None, dtype=object), np.zeros(len(yb))
            correct[i, sl] = pred == yb
            losses[i, sl] = np.minimum(-np.log(np.maximum(p_true, 1e-15)), _MAX_LOSS)
            node.learn_many(Xb, list(yb))
    proto = make_protocol("nosync", m=m, d=1, w0=torch.zeros(1), seed=0, device="cpu")
    return SimResult(protocol=str(protocol), m=m, n=n, batch_size=batch_size, d=0, correct=correct, losses=losses,
                     comm=proto.stats.as_dict(), syncs=[], events=[ev for ev in data.events if ev.position < n],
                     final_models=torch.zeros(m, 0), seconds=time.perf_counter() - t0)
