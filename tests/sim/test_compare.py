"""Whether syncing helps (``sync_verdict``) and what the comparison table says about it."""

from __future__ import annotations

import pytest

from streamlearn.sim.compare import matched_accuracy, sync_verdict
from streamlearn.sim.run import _verdict_lines


def row(protocol, accuracy, transfers=0, bytes_=None):
    return {"protocol": protocol, "accuracy": accuracy, "transfers": transfers,
            "bytes": 52 * transfers if bytes_ is None else bytes_}


def grid(periodic_b1, periodic_b8, dynamic, nosync, serial=0.95):
    return [row("periodic:b=1", periodic_b1, 1600), row("periodic:b=8", periodic_b8, 200),
            row("dynamic:delta=0.3", dynamic, 40), row("nosync", nosync), row("serial", serial)]


def test_sync_helps():
    v = sync_verdict(grid(0.900, 0.897, 0.896, 0.880))
    assert v["sync_helps"] is True
    assert v["best_synced"] == "periodic:b=1" and v["best_synced_accuracy"] == 0.900
    assert v["best_synced_transfers"] == 1600 and v["best_synced_bytes"] == 1600 * 52
    assert v["nosync_accuracy"] == 0.880
    assert v["sync_gain_points"] == pytest.approx(2.0) and v["nosync_margin_points"] == pytest.approx(-2.0)
    m = v["matched"]
    assert (m["periodic"], m["dynamic"], m["ratio"]) == ("periodic:b=8", "dynamic:delta=0.3", 5.0)
    assert (m["periodic_bytes"], m["dynamic_bytes"]) == (200 * 52, 40 * 52)


def test_no_sync_is_best():
    v = sync_verdict(grid(0.870, 0.860, 0.865, 0.880))
    assert v["sync_helps"] is False
    assert v["nosync_margin_points"] == pytest.approx(1.0)
    assert v["best_synced"] == "periodic:b=1"
    assert v["matched"] is None  # no saving to report where syncing buys nothing


@pytest.mark.parametrize("best, helps", [(0.883, False), (0.8849, False), (0.885, True), (0.8851, True)])
def test_a_gain_below_the_tolerance_is_no_help(best, helps):
    v = sync_verdict(grid(best, 0.87, 0.86, 0.880))
    assert v["sync_helps"] is helps
    assert v["nosync_margin_points"] == pytest.approx(100 * (0.880 - best))


def test_tolerance_is_a_parameter():
    rows = grid(0.883, 0.87, 0.86, 0.880)
    assert sync_verdict(rows)["sync_helps"] is False
    assert sync_verdict(rows, tolerance=0.002)["sync_helps"] is True


def test_serial_is_not_a_synced_setting():
    # one learner on all the data is far better, but it is no way to run the nodes
    v = sync_verdict(grid(0.870, 0.860, 0.865, 0.880, serial=0.99))
    assert v["sync_helps"] is False and v["best_synced"] == "periodic:b=1"


def test_ties_pick_the_cheapest_best_setting():
    v = sync_verdict(grid(0.900, 0.897, 0.900, 0.880))
    assert v["best_synced"] == "dynamic:delta=0.3"


def test_other_protocols_count_as_synced():
    v = sync_verdict([row("fedavg:b=4,C=0.5", 0.91, 300), row("nosync", 0.88)])
    assert v["sync_helps"] is True and v["best_synced"] == "fedavg:b=4,C=0.5"
    assert v["matched"]["ratio"] is None  # no periodic/dynamic pair to compare


def test_no_nosync_row():
    rows = [r for r in grid(0.900, 0.897, 0.896, 0.880) if r["protocol"] != "nosync"]
    v = sync_verdict(rows)
    assert v["sync_helps"] is None and v["reason"] == "no nosync row"
    assert "nosync_margin_points" not in v and "sync_gain_points" not in v
    assert v["matched"] == matched_accuracy(rows)  # the ratio is still there to print


def test_no_synced_setting():
    v = sync_verdict([row("nosync", 0.88), row("serial", 0.9)])
    assert v["sync_helps"] is None and v["reason"] == "no synced setting" and v["matched"] is None


# ---- the lines the comparison table ends with -------------------------------------------------------


def lines(rows):
    return _verdict_lines(sync_verdict(rows), matched_accuracy(rows))


def test_lines_no_sync_is_best_print_no_ratio():
    assert lines(grid(0.870, 0.860, 0.865, 0.880)) == ["no sync is best here (by 1.00 points)"]


def test_lines_synced_within_the_tolerance():
    assert lines(grid(0.8831, 0.860, 0.865, 0.880)) == [
        "no sync is best here (synced settings are within 0.5 points: best periodic:b=1 +0.31)"]


def test_lines_sync_helps_print_the_gain_and_the_ratio():
    out = lines(grid(0.900, 0.897, 0.896, 0.880))
    assert out[0] == "syncing helps here: best periodic:b=1 0.9000, +2.00 points over no sync 0.8800"
    assert out[1].startswith("matched accuracy (within 0.5 points of the best periodic 0.9000): periodic:b=8 sends 200")
    assert out[1].endswith("dynamic:delta=0.3 sends 40: ratio 5.00")
    assert len(out) == 2


def test_lines_without_nosync_say_so_and_keep_the_ratio():
    out = lines([r for r in grid(0.900, 0.897, 0.896, 0.880) if r["protocol"] != "nosync"])
    assert out[0].startswith("the comparison has no nosync row, so it cannot say whether syncing helps")
    assert out[1].endswith("ratio 5.00") and len(out) == 2
