import numpy as np
from river import linear_model

from streamlearn.evaluation import PrequentialBank, evaluate, plot_history

PNG = b"\x89PNG\r\n\x1a\n"


def flip_stream(n=800, at=400):
    rng = np.random.default_rng(0)
    a = rng.random(n)
    return [({"a": float(v)}, bool((v > 0.5) != (i >= at))) for i, v in enumerate(a)]


def test_plot_result_writes_png(tmp_path):
    res = evaluate(flip_stream(), linear_model.LogisticRegression(), events=[400], window=100, every=20, progress=False)
    out = plot_history(res, path=tmp_path / "sub" / "run.png", title="flip")
    data = (tmp_path / "sub" / "run.png").read_bytes()
    assert out == tmp_path / "sub" / "run.png"
    assert data.startswith(PNG) and len(data) > 5000


def test_plot_bank_history_and_several_runs(tmp_path):
    rng = np.random.default_rng(1)
    bank = PrequentialBank(3, window=50, every=10)
    bank.update(rng.random((3, 500)) < 0.8)
    h = bank.history()
    path = plot_history(h, events=[{"position": 250}], detections=[[260], [], [300, 310]], path=str(tmp_path / "bank.png"))
    assert open(path, "rb").read(8) == PNG
    one = {"position": h["position"], "rolling_accuracy": h["rolling_accuracy"][0]}
    path = plot_history([one, one], events=[], detections=[100], path=str(tmp_path / "two.png"), labels=["x", "y"])
    assert open(path, "rb").read(8) == PNG
