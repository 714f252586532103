"""Missing values reach a node as missing (JSON null, NaN in a binary batch) and the node imputes or skips
them in the order it reads them, exactly as ``MissingValues`` (the simulator's rule) does, and counts them."""

import numpy as np
from test_kafka_pipeline import CLASSES, FEATURES, Pipeline, publish

from separable import make_data
from streamlearn.kafka.codecs import Sample, decode_sample_json, encode_sample_batch, encode_sample_json
from streamlearn.kafka.topics import ensure_topics
from streamlearn.learners.preprocessing import MissingValues


def _records(X, y):
    """Half JSON (a missing value as null), half binary batches (NaN), interleaved."""
    out = []
    for i in range(0, len(y), 20):
        if (i // 20) % 2:
            out.append(encode_sample_batch(X[i:i + 20], y[i:i + 20], first_seq=i, names=FEATURES, allow_missing=True))
        else:
            out += [encode_sample_json(Sample(seq=i + j, x=dict(zip(FEATURES, X[i + j].tolist())),
                                              y=CLASSES[int(y[i + j])])) for j in range(min(20, len(y) - i))]
    return out


def test_null_is_a_missing_value_in_json_and_nan_in_a_batch():
    data = encode_sample_json(Sample(seq=0, x={"a": float("nan"), "b": 1.0}, y=1))
    assert data == b'{"seq":0,"x":{"a":null,"b":1.0},"y":1}'
    assert decode_sample_json(data).x == {"a": None, "b": 1.0}


def test_nodes_impute_or_skip_missing_values_as_the_simulator_does(broker, settings, prefix):
    X, y = make_data(400, 11)
    X = X.astype(np.float32)
    rng = np.random.default_rng(3)
    X[rng.random(X.shape) < 0.08] = np.nan
    X[0] = [0.1, 0.2, 0.3]  # every feature seen once before any gap
    want = {policy: MissingValues(len(FEATURES), policy) for policy in ("impute", "skip")}
    kept = {policy: int(mv.apply(X)[1].sum()) for policy, mv in want.items()}
    assert kept["impute"] == 400 and kept["skip"] < 400
    ensure_topics(broker.bootstrap, prefix, 2, settings=settings)
    publish(settings, prefix, {0: _records(X, y), 1: _records(X, y)})
    with Pipeline(broker, settings, prefix, spec="nosync") as p:
        p.start_node(0, missing="impute")
        p.start_node(1, missing="skip")
        p.wait(p.learned({0: kept["impute"], 1: kept["skip"]}), what="every kept sample learned")
        p.wait(lambda r: r.nodes[0].get("missing_imputed") == want["impute"].imputed
               and r.nodes[1].get("missing_skipped") == want["skip"].skipped, what="the missing counts")
        st0, st1 = p.status.nodes[0], p.status.nodes[1]
    assert st0["deadletters"] == st1["deadletters"] == 0
    assert st0["missing_skipped"] == 0 and st0["missing_policy"] == "impute"
    assert st1["missing_imputed"] == 0 and st1["missing_rows"] == 400 - kept["skip"]
    assert st0["accuracy"] > 0.7
