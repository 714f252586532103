"""The node's learning core driven with plain objects: no broker, no Kafka client.

Mini-batches go in as numpy arrays (float32 features, class indices); sync messages as small
stand-ins with the fields a decoded sync message has; what the core would send comes back as
:class:`~streamlearn.node.Outgoing` values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from streamlearn.evaluation import clipped_log_loss
from streamlearn.learners import TorchLearner, make_learner
from streamlearn.node import NodeCore, Outgoing
from streamlearn.sync.codec import compress_rows, make_codec, pack_delta, unpack_delta

from separable import make_data

FEATURES, CLASSES, B = ["a", "b", "c"], [0, 1], 10


@dataclass(frozen=True, eq=False)
class Msg:
    """A decoded sync message as the core reads it."""

    kind: str
    reason: str | None = "sync"
    epoch: str | None = "e1"
    targets: tuple | None = (0,)
    reference: bool = False
    strength: float | None = None
    request: int | None = None
    model: object = None
    delta: bytes | None = None


def learner(**params):
    return make_learner("logreg", features=FEATURES, classes=CLASSES, seed=0, device="cpu", **{"lr": 0.5, **params})


def feed(core: NodeCore, X, y, start: int = 0) -> list[Outgoing]:
    """Learn ``X, y`` in mini-batches of B; what the node rule asked to send."""
    sent = []
    for i in range(0, len(y), B):
        core.learn_many(X[i:i + B], y[i:i + B], np.arange(start + i, start + i + len(y[i:i + B])))
        out = core.node_rule()
        if out is not None:
            sent.append(out)
    return sent


def test_test_then_train_scores_each_batch_before_learning_it():
    X, y = make_data(200, seed=1)
    core = NodeCore(learner(), CLASSES, "nosync")
    twin = learner()  # the same w0: predicts what the core's learner predicts before each step
    correct, losses = [], []
    for i in range(0, 200, B):
        P = twin.predict_proba_many(X[i:i + B])
        twin.learn_many(X[i:i + B], y[i:i + B])
        correct.append(P.argmax(axis=1) == y[i:i + B])
        losses.append(clipped_log_loss(P[np.arange(B), y[i:i + B]]))
        core.learn_many(X[i:i + B], y[i:i + B], np.arange(i, i + B))
        np.testing.assert_array_equal(core.step_correct, correct[-1])
        np.testing.assert_allclose(core.step_loss, losses[-1], rtol=1e-5, atol=1e-6)
    assert (core.n_samples, core.n_steps, core.last_seq) == (200, 20, 199)
    assert core.preq.accuracy == pytest.approx(np.concatenate(correct).mean())
    assert core.last_loss == pytest.approx(losses[-1].mean(), rel=1e-5)
    torch.testing.assert_close(core.learner.get_flat(), twin.get_flat())
    assert not core.averageable or core.node_rule() is None  # nosync: never a report


def test_late_labelled_samples_keep_the_score_of_their_early_prediction():
    X, y = make_data(10, seed=2)
    core = NodeCore(learner(), CLASSES, "nosync")
    early = np.zeros((10, 3))
    early[:5] = [1.0, 0.0, 0.25]  # predicted wrong on arrival, 0.25 for the true label
    core.learn_many(X, y, np.arange(10), early)
    assert not core.step_correct[:5].any()
    np.testing.assert_allclose(core.step_loss[:5], -np.log(0.25))


def test_the_node_rule_reports_with_the_model_and_waits_for_the_answer():
    X, y = make_data(200, seed=3)
    core = NodeCore(learner(), CLASSES, "periodic:b=4", node=0, sync_timeout=60.0)
    sent = feed(core, X[:80], y[:80])
    # step 4: the model goes up; step 8: its answer is still awaited, so the model is not sent again
    assert [(o.kind, o.fields["step"]) for o in sent] == [("report", 4)]
    report = sent[0].fields
    assert report["n_samples"] == 40 and report["node"] == 0 and np.isfinite(report["loss"])
    assert report["model"] is not None and sent[0].on_sent is None  # fp32: sent whole, no codec memory
    assert (core.violations, core.reports_sent, core.suppressed) == (1, 1, 1)
    # the answer: a full sync; the next model goes up at its step
    out = core.receive(Msg("send", reference=True, model=core.learner.get_flat().numpy()))
    assert out.applied and out.waited is not None and out.waited >= 0
    assert core.awaiting is None and core.since_sync == 0 and core.syncs == 1
    sent = feed(core, X[80:120], y[80:120], 80)
    assert [(o.fields["step"], o.fields["n_samples"]) for o in sent] == [(12, 40)]
    # a protocol whose rule reports without the model
    core = NodeCore(learner(), CLASSES, "fedavg:b=2")
    sent = feed(core, X[:40], y[:40])
    assert [o.fields["step"] for o in sent] == [2, 4] and all("model" not in o.fields for o in sent)


def test_a_violation_under_dynamic_averaging_reports_the_model():
    X, y = make_data(100, seed=4)
    core = NodeCore(learner(), CLASSES, "dynamic:delta=0.01,b=1")
    sent = feed(core, X[:10], y[:10])
    assert [o.kind for o in sent] == ["report"] and sent[0].fields["model"] is not None
    assert core.divergence > 0.01
    loose = NodeCore(learner(), CLASSES, "dynamic:delta=1e9,b=1")
    assert feed(loose, X, y) == [] and loose.divergence > 0


def test_send_pull_request_and_reject():
    X, y = make_data(100, seed=5)
    core = NodeCore(learner(), CLASSES, "periodic:b=100")
    feed(core, X, y)
    w = core.learner.get_flat().clone()
    # request: the current model goes up, nothing changes here
    out = core.receive(Msg("request", request=7))
    [answer] = out.up
    assert answer.kind == "model" and answer.fields["request"] == 7 and torch.equal(answer.fields["model"], w)
    assert not out.applied and core.syncs == 0
    # a partial sync: the model, not the reference
    model = torch.full_like(w, 0.5)
    out = core.receive(Msg("send", reference=False, model=model.numpy()))
    assert out.applied and torch.equal(core.learner.get_flat(), model) and not torch.equal(core.reference, model)
    w0 = learner().get_flat()  # still the reference: a partial sync does not move it
    assert core.last_sync_kind == "partial"
    assert core.divergence == pytest.approx(float(((model - w0)[:core.n_params] ** 2).sum()), rel=1e-5)
    # pull: w <- w - s (w - model)
    target = torch.zeros_like(w)
    core.receive(Msg("pull", strength=0.25, model=target.numpy()))
    torch.testing.assert_close(core.learner.get_flat(), model * 0.75)
    assert core.last_sync_kind == "pull" and core.syncs == 2 and list(core.sync_positions) == [100, 100]
    # a full sync sets the reference too
    core.receive(Msg("send", reference=True, model=target.numpy()))
    assert torch.equal(core.reference, target) and core.divergence == 0.0 and core.last_sync_kind == "full"
    # join: the epoch; a node that already holds the reference keeps its model
    core.learn_many(X[:10], y[:10], np.arange(10))
    learned = core.learner.get_flat().clone()
    out = core.receive(Msg("send", reason="join", reference=True, epoch="e2", model=target.numpy()))
    assert not out.applied and core.joined and core.epoch == "e2" and torch.equal(core.learner.get_flat(), learned)
    # hello of a new sync service: register again; reject: learning goes on locally
    [join] = core.receive(Msg("hello", epoch="e3", targets=None)).up
    assert join.kind == "join" and torch.equal(join.fields["model"], target)
    core.receive(Msg("reject", reason="full"))
    assert core.rejected == "full" and not core.joined


def test_the_full_sync_of_a_group_of_one_sets_the_reference_and_keeps_the_model():
    # split=N: a node alone in its group gets its own model back, after it learned on; it keeps what it learned
    X, y = make_data(200, seed=10)
    core = NodeCore(learner(), CLASSES, "periodic:b=5,split=3", guard=100, guard_margin=0.05)
    feed(core, X, y)
    sent = core.learner.get_flat().clone() * 0.5  # what it sent a few steps ago (any model will do)
    core.awaiting = 1.0
    learned = core.learner.get_flat().clone()
    out = core.receive(Msg("send", reason="alone", reference=True, model=sent.numpy()))
    assert out.applied and not out.up and core.awaiting is None  # answered; nothing to decline
    assert torch.equal(core.learner.get_flat(), learned) and torch.equal(core.reference, sent)
    assert core.last_sync_kind == "full" and core.declines == 0


def test_a_guarded_core_declines_a_worse_model_and_keeps_the_reference():
    X, y = make_data(600, seed=6)
    core = NodeCore(learner(), CLASSES, "periodic:b=1000", guard=200, guard_margin=0.05)
    feed(core, X, y)
    own = core.learner.get_flat().clone()
    opposite = -own
    out = core.receive(Msg("send", reference=True, model=opposite.numpy()))
    [decline] = out.up
    assert decline.kind == "decline" and decline.fields == {"node": 0, "step": 60}
    assert not out.applied and core.declines == 1 and core.guard.checks == 1 and core.syncs == 0
    assert torch.equal(core.learner.get_flat(), own) and torch.equal(core.reference, opposite)  # reference taken
    loss_in, loss_own = core.guard.last_losses
    assert loss_in > loss_own + 1.0
    # a pull toward it: declined too, the reference stays
    assert core.receive(Msg("pull", strength=0.9, model=opposite.numpy())).up[0].kind == "decline"
    # its own model again: taken
    out = core.receive(Msg("send", reference=True, model=own.numpy()))
    assert out.applied and out.up == [] and core.declines == 2 and core.guard.checks == 3
    # a join's reference is never judged
    out = core.receive(Msg("send", reason="join", reference=True, model=opposite.numpy()))
    assert out.applied and core.guard.checks == 3


def test_the_step_size_schedule_restarts_on_a_detected_rise_of_the_error():
    X, y = make_data(3000, seed=7, flip_at=1500)
    make = lambda: TorchLearner("logreg", lr=0.5, lr_decay=20, seed=0, device="cpu",  # noqa: E731
                                features=FEATURES, classes=CLASSES)
    core = NodeCore(make(), CLASSES, "nosync", detector="adwin")
    feed(core, X, y)
    lrn = core.learner
    assert core.n_drifts >= 1 and all(1500 <= s < 2000 for s in core.drifts)
    assert lrn.n_steps_ == 300 and 150 < lrn.t_reset_ <= 200  # the clock restarted after the rise
    # without the detector: no restart
    plain = NodeCore(make(), CLASSES, "nosync", detector=None)
    feed(plain, X, y)
    assert plain.learner.t_reset_ == 0 and plain.n_drifts == 0


def test_a_compressed_model_keeps_its_error_feedback_only_once_sent():
    X, y = make_data(50, seed=8)
    core = NodeCore(learner(scale=True), CLASSES, "periodic:b=100,codec=sign")
    [join] = [core.join()]
    assert join.fields["model"] is not None and core.uplink is not None
    feed(core, X, y)
    w, r, p = core.learner.get_flat().float(), core.reference.clone(), core.n_params
    out = core.model_message("model", node=0, step=core.n_steps)
    _, parts, E = compress_rows(make_codec("sign"), w[None], r[None], torch.zeros(1, p), p)
    assert out.fields["delta"] == pack_delta(make_codec("sign"), parts, w[p:], r, p)
    assert not core.uplink.memory.any()  # not sent yet
    out.on_sent()
    assert torch.equal(core.uplink.memory, E)
    # a send as a delta to the node's reference: r + dequantized parts
    model = r + 0.1
    _, parts, _ = compress_rows(make_codec("sign"), model[None], r[None], None, p)
    delta = pack_delta(make_codec("sign"), parts, model[p:], r, p)
    out = core.receive(Msg("send", reference=True, delta=delta))
    codec, got, tail, n, _ = unpack_delta(delta, reference=r, expected_d=core.d)
    expect = r.clone()
    expect[:n] += codec.dequantize(got, n)[0]
    expect[n:] = tail
    assert out.applied and torch.equal(out.model, expect)  # what the learner then sets (its scaler may clip)
    # a delta to another reference: counted, and the core registers again
    out = core.receive(Msg("send", reference=True, delta=pack_delta(make_codec("sign"), parts, model[p:], r + 1, p)))
    assert not out.applied and core.reference_mismatches == 1 and [o.kind for o in out.up] == ["join"]
    assert core.receive(Msg("send", reference=True, delta=b"SZ junk")).bad


def test_a_model_that_went_nan_is_not_sent_as_a_delta():
    core = NodeCore(learner(), CLASSES, "periodic:b=1,codec=sign")
    core.join()
    core.learner.set_flat(torch.full_like(core.learner.get_flat(), float("nan")))
    out = core.model_message("report", node=0, step=1)
    assert out.error and "NaN" in out.error


def test_a_local_learner_learns_without_the_protocol():
    X, y = make_data(100, seed=9)
    core = NodeCore(make_learner("hoeffding-tree", features=FEATURES), CLASSES, "periodic:b=2")
    assert not core.averageable and core.protocol is None
    assert feed(core, X, y) == [] and core.n_samples == 100
    assert core.receive(Msg("send", model=np.zeros(3, np.float32))).up == []
    P = core.predict_proba(X[:5])
    assert P.shape == (5, 2) and np.allclose(P.sum(axis=1), 1)


def test_the_core_package_imports_nothing_of_kafka():
    import subprocess
    import sys

    code = ("import sys, streamlearn.node, streamlearn.node.core; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'kafka' or m.startswith('streamlearn.kafka')]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_split_without_a_guard_is_logged(caplog):
    with caplog.at_level("WARNING", logger="streamlearn.node.core"):
        NodeCore(learner(), CLASSES, "periodic:b=5,split=3")
    assert "no --guard" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="streamlearn.node.core"):
        NodeCore(learner(), CLASSES, "periodic:b=5,split=3", guard=100)
    assert "no --guard" not in caplog.text


def test_a_sync_keeps_the_steps_the_node_learned_after_it_sent_its_model():
    # Over Kafka the average comes a round trip after the model went up; the node learned on meanwhile. The steps
    # since the model it sent are its own progress: it holds average + (w_now - w_sent), the reference the average.
    X, y = make_data(300, seed=11)
    core = NodeCore(learner(), CLASSES, "periodic:b=2")
    sent = feed(core, X[:20], y[:20])[-1]  # step 2: the model goes up
    w_sent = sent.fields["model"].clone()
    feed(core, X[20:50], y[20:50], start=20)  # three more steps before the answer comes
    w_now = core.learner.get_flat().clone()
    average = torch.full_like(w_now, 0.25)
    out = core.receive(Msg("send", reference=True, model=average.numpy()))
    assert out.applied and torch.equal(core.reference, average)
    torch.testing.assert_close(core.learner.get_flat(), average + (w_now - w_sent))
    # an answer that comes before any further step is the average itself; a join never keeps anything
    assert feed(core, X[50:60], y[50:60], start=50)  # step 6: the model goes up
    core.receive(Msg("send", reference=True, model=average.numpy()))
    assert torch.equal(core.learner.get_flat(), average)
    feed(core, X[60:90], y[60:90], start=60)
    core.receive(Msg("send", reason="join", reference=True, epoch="e9", model=(average * 2).numpy()))
    assert torch.equal(core.learner.get_flat(), average * 2)


@pytest.mark.parametrize("scale", [False, True])
def test_the_divergence_follows_every_new_reference_and_equals_the_torch_sum(scale):
    # On CPU the divergence is taken in numpy on a view of the reference kept between steps: it must follow a
    # reference set by a sync or assigned whole (a checkpoint restore), and equal torch's sum of squares.
    X, y = make_data(200, seed=5)
    core = NodeCore(learner(scale=scale), CLASSES, "dynamic:delta=0.5,b=1", detector=None)
    p = core.n_params

    def torch_divergence():
        x = core.learner.get_flat()[:p] - core.reference[:p]
        return float((x.double() ** 2).sum())

    feed(core, X[:100], y[:100])
    assert core.divergence > 0 and core.divergence == pytest.approx(torch_divergence(), rel=1e-5)
    target = torch.full_like(core.learner.get_flat(), 0.125)
    # a full sync: the reference moves (the model keeps the steps learned since it went up)
    core.receive(Msg("send", reference=True, model=target.numpy()))
    assert torch.equal(core.reference, target)
    assert core.divergence == core.model_divergence() == pytest.approx(torch_divergence(), rel=1e-5)
    core.reference = torch.zeros_like(target)  # assigned whole, as a checkpoint restore does
    assert core.model_divergence() == pytest.approx(torch_divergence(), rel=1e-6)
    feed(core, X[100:], y[100:], start=100)
    assert core.divergence == pytest.approx(torch_divergence(), rel=1e-5)


def test_the_short_scoring_path_scores_as_score_step():
    # A torch learner predicts in the declared class order: the core scores inline, as score_step would.
    from streamlearn.node.scoring import score_step

    X, y = make_data(100, seed=9)
    core = NodeCore(learner(), CLASSES, "nosync", detector=None)
    for i in range(0, 100, 7):  # uneven last batch: the row index is remade for a new size
        yi = y[i:i + 7]
        core.learn_many(X[i:i + 7], yi, np.arange(i, i + len(yi)))
        correct, p_true, valid = score_step(core.step_proba, core.learner, CLASSES, yi)
        assert np.array_equal(core.step_correct, correct) and valid.all()
        np.testing.assert_array_equal(core.step_loss, clipped_log_loss(p_true))
    assert core.preq.n == 100
