"""End-to-end tests of the ``streamlearn`` command line.

Most commands run in-process through ``streamlearn.cli.main(argv)`` (fast); one runs through the real
console script in a subprocess. Sample counts are small so the whole file runs in well under a minute.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamlearn.cli import main
from streamlearn.learners import LEARNERS
from streamlearn.streams import DRIFT_KINDS, SOURCES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SOURCE_NAMES = ["sea", "hyperplane", "rbf", "agrawal", "stagger", "elec2", "csv:PATH"]
HEADER = "a,b,c,cls"


# ---- helpers ---------------------------------------------------------------------------------------


def _rows(n: int = 400, seed: int = 0) -> list[str]:
    """Data lines of a separable CSV: cls = pos iff a + b > 0 (with a margin), c is noise."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        a, b, c = rng.uniform(-1, 1, 3)
        if abs(a + b) < 0.2:
            continue
        out.append(f"{a:.4f},{b:.4f},{c:.4f},{'pos' if a + b > 0 else 'neg'}")
    return out


def _write_csv(path: Path, n: int = 400, replace: dict | None = None) -> Path:
    """Write the CSV; ``replace`` maps a file line number (header = line 1) to the text of that line."""
    lines = [HEADER] + _rows(n)
    for line_no, text in (replace or {}).items():
        lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _kv_table(text: str) -> dict:
    """``label  value`` rows of the evaluate summary table."""
    table = {}
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 2 and not set(cells[0]) <= {"-"}:
            table[cells[0]] = cells[1]
    return table


def _row_table(text: str) -> list[dict]:
    """Rows of the simulate table (header ``protocol  accuracy  ...``), up to the first blank line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("protocol"))
    header = re.split(r"\s{2,}", lines[start].strip())
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        rows.append(dict(zip(header, re.split(r"\s{2,}", line.strip()))))
    return rows


def _sections(text: str) -> dict:
    """``streamlearn streams`` output as {section title word: {entry name: [param lines]}}."""
    sections, current = {}, None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            current = sections.setdefault(line.split()[0], {})
            entry = None
        elif line[2] != " ":
            entry = line.split()[0]
            current[entry] = []
        else:
            current[entry].append(line.strip())
    return sections


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("streamlearn")
    return [str(script)] if script.exists() else [sys.executable, "-m", "streamlearn.cli"]


# ---- streamlearn streams ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def streams_output():
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["streams"])
    assert code == 0
    return buf.getvalue()


def test_streams_lists_every_source_with_its_parameters(streams_output):
    sources = _sections(streams_output)["Sources"]
    assert set(SOURCE_NAMES) <= set(sources)
    assert set(SOURCES) <= set(sources)
    for name, info in SOURCES.items():
        for param, default in info["params"].items():
            assert f"{param} = {default}" in sources[name], (name, param)
    # what a csv user needs to know
    assert {"label = None", "features = None", "classes = None", "on_bad_record = raise"} <= set(sources["csv:PATH"])
    assert "variant = 0" in sources["sea"]


def test_streams_lists_every_drift_kind_with_its_parameters(streams_output):
    kinds = _sections(streams_output)["Drift"]
    assert set(DRIFT_KINDS) == set(kinds)
    assert {"sudden", "gradual", "incremental", "recurring"} <= set(kinds)
    for name, info in DRIFT_KINDS.items():
        for param, default in info.get("params", {}).items():
            assert f"{param} = {default}" in kinds[name], (name, param)
    assert "width = 1000" in kinds["gradual"]


def test_streams_lists_every_learner(streams_output):
    learners = _sections(streams_output)["Learners"]
    assert set(LEARNERS) == set(learners)
    assert {"logreg", "mlp", "cnn", "river-logreg", "hoeffding-tree"} <= set(learners)


def test_streams_lists_learner_parameters(streams_output):
    learners = _sections(streams_output)["Learners"]
    assert any(line.startswith("lr") for line in learners["logreg"])
    assert any(line.startswith("hidden") for line in learners["mlp"])


# ---- streamlearn evaluate, through the real console script ----------------------------------------


@pytest.fixture(scope="module")
def evaluate_sea(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate_sea")
    plot, js = out / "acc.png", out / "res.json"
    cmd = _console_script() + ["evaluate", "--source", "sea", "--drift", "sudden@2000", "--learner", "logreg",
                               "--n", "4000", "--no-progress", "--plot", str(plot), "--json", str(js)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=out, timeout=600)
    return proc, plot, js


def test_evaluate_subprocess_exit_code_and_table(evaluate_sea):
    proc, plot, js = evaluate_sea
    assert proc.returncode == 0, proc.stderr
    table = _kv_table(proc.stdout)
    assert table["samples"] == "4000"
    assert table["drifts injected"] == "1"
    assert 0.8 < float(table["accuracy"]) <= 1.0
    assert f"wrote {plot}" in proc.stdout and f"wrote {js}" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_evaluate_subprocess_writes_png(evaluate_sea):
    _, plot, _ = evaluate_sea
    assert plot.read_bytes()[:8] == PNG_MAGIC
    assert plot.stat().st_size > 1000


def test_evaluate_subprocess_writes_json(evaluate_sea):
    proc, _, js = evaluate_sea
    d = json.loads(js.read_text())
    assert d["n"] == 4000
    assert d["source"] == "sea" and d["learner"] == "logreg" and d["drift"] == ["sudden@2000"]
    assert f"{d['accuracy']:.4f}" == _kv_table(proc.stdout)["accuracy"]
    assert [(e["position"], e["kind"]) for e in d["events"]] == [(2000, "sudden")]
    assert isinstance(d["detections"], list)
    assert all(isinstance(p, int) and 0 <= p < 4000 for p in d["detections"])
    assert len(d["detections"]) == int(_kv_table(proc.stdout)["drifts detected (the error rose)"])
    assert d["score"]["events"] == [2000]


# ---- evaluate on a CSV file ------------------------------------------------------------------------


def test_evaluate_csv(tmp_path, capsys):
    path = _write_csv(tmp_path / "good.csv")
    code, out, err = _run(capsys, "evaluate", "--source", f"csv:{path}", "--label", "cls", "--learner", "logreg",
                          "--no-progress", "--json", tmp_path / "r.json")
    assert code == 0, err
    table = _kv_table(out)
    assert table["samples"] == "400"  # the whole file by default
    assert table["skipped bad records"] == "0"
    assert float(table["accuracy"]) > 0.8
    assert table["drifts injected"] == "0"
    assert json.loads((tmp_path / "r.json").read_text())["n"] == 400


def test_evaluate_csv_feature_subset(tmp_path, capsys):
    path = _write_csv(tmp_path / "good.csv")
    code, out, err = _run(capsys, "evaluate", "--source", f"csv:{path}", "--label", "cls", "--features", "a,b",
                          "--learner", "river-logreg", "--no-progress")
    assert code == 0, err
    assert float(_kv_table(out)["accuracy"]) > 0.8


# (file line, text of that line, column named in the error, value named in the error)
BAD_LINES = {
    "empty value": (5, "0.5,,0.1,pos", "b", "''"),
    "short line": (7, "0.5,0.4", "c", "None"),
    "non-numeric": (9, "0.5,0.4,oops,pos", "c", "'oops'"),
    "nan": (11, "nan,0.4,0.1,pos", "a", "'nan'"),
    "infinite": (12, "0.5,inf,0.1,pos", "b", "'inf'"),
    "missing label": (13, "0.5,0.4,0.1,", "cls", "''"),
    "extra field": (14, "0.5,0.4,0.1,pos,7", None, "'7'"),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_evaluate_csv_bad_record_names_row_column_value(tmp_path, capsys, case):
    line, text, column, value = BAD_LINES[case]
    path = _write_csv(tmp_path / "bad.csv", replace={line: text})
    # --missing error: an empty field is a bad record (by default it is a missing value, imputed)
    code, out, err = _run(capsys, "evaluate", "--source", f"csv:{path}", "--label", "cls", "--learner", "logreg",
                          "--no-progress", "--missing", "error")
    assert code == 2
    assert err.startswith("streamlearn evaluate: error:")
    assert f"row {line}" in err
    if column is not None:
        assert f"column {column!r}" in err
    assert f"value {value}" in err
    assert "--on-bad-record skip" in err  # the way past it, named
    assert "Traceback" not in err


def test_evaluate_csv_unknown_label_with_declared_classes(tmp_path, capsys):
    path = _write_csv(tmp_path / "bad.csv", replace={6: "0.5,0.4,0.1,maybe"})
    code, _, err = _run(capsys, "evaluate", "--source", f"csv:{path}", "--label", "cls", "--classes", "neg,pos",
                        "--learner", "logreg", "--no-progress")
    assert code == 2
    assert "row 6" in err and "column 'cls'" in err and "'maybe'" in err
    code, out, _ = _run(capsys, "evaluate", "--source", f"csv:{path}", "--label", "cls", "--classes", "neg,pos",
                        "--learner", "logreg", "--no-progress", "--on-bad-record", "skip")
    assert code == 0
    assert _kv_table(out)["skipped bad records"] == "1"


def test_evaluate_csv_first_bad_record_is_reported(tmp_path, capsys):
    path = _write_csv(tmp_path / "bad.csv", replace={20: "0.1,x,0.1,pos", 8: "0.1,0.2,y,neg"})
    code, _, err = _run(capsys, "evaluate", "--source", f"csv:{path}", "--label", "cls", "--no-progress")
    assert code == 2
    assert "row 8" in err and "'y'" in err


def _all_bad(tmp_path) -> Path:
    return _write_csv(tmp_path / "bad.csv", replace={line: text for line, text, _, _ in BAD_LINES.values()})


def test_evaluate_csv_skip_bad_records(tmp_path, capsys):
    path = _all_bad(tmp_path)
    code, out, err = _run(capsys, "evaluate", "--source", f"csv:{path}", "--label", "cls", "--learner", "logreg",
                          "--no-progress", "--on-bad-record", "skip", "--missing", "error")
    assert code == 0, err
    table = _kv_table(out)
    assert table["samples"] == str(400 - len(BAD_LINES))  # the bad lines were left out
    assert float(table["accuracy"]) > 0.8


def test_evaluate_csv_skip_prints_the_skipped_count(tmp_path, capsys):
    path = _all_bad(tmp_path)
    code, out, _ = _run(capsys, "evaluate", "--source", f"csv:{path}", "--label", "cls", "--learner", "logreg",
                        "--no-progress", "--on-bad-record", "skip", "--missing", "error")
    assert code == 0
    assert _kv_table(out)["skipped bad records"] == str(len(BAD_LINES))


@pytest.mark.parametrize("command", ["evaluate", "simulate"])
def test_csv_needs_label(tmp_path, capsys, command):
    path = _write_csv(tmp_path / "good.csv")
    code, out, err = _run(capsys, command, "--source", f"csv:{path}", "--learner", "logreg", "--no-progress")
    assert code == 2
    assert "--label" in err and "csv" in err
    assert out == ""


def test_csv_label_not_in_header(tmp_path, capsys):
    path = _write_csv(tmp_path / "good.csv")
    code, _, err = _run(capsys, "evaluate", "--source", f"csv:{path}", "--label", "target", "--no-progress")
    assert code == 2
    assert "row 1" in err and "'target'" in err


def test_csv_missing_file(tmp_path, capsys):
    code, _, err = _run(capsys, "evaluate", "--source", f"csv:{tmp_path / 'nope.csv'}", "--label", "cls",
                        "--no-progress")
    assert code == 2
    assert "nope.csv" in err


def test_label_only_for_csv(capsys):
    code, _, err = _run(capsys, "evaluate", "--source", "sea", "--label", "y", "--n", "50", "--no-progress")
    assert code == 2
    assert "--label" in err and "'sea'" in err


# ---- evaluate on the shipped Elec2 stream ---------------------------------------------------------


def test_evaluate_elec2_river_logreg(capsys):
    code, out, err = _run(capsys, "evaluate", "--source", "elec2", "--learner", "river-logreg", "--n", "3000",
                          "--no-progress")
    assert code == 0, err
    table = _kv_table(out)
    assert table["samples"] == "3000"
    assert 0.55 < float(table["accuracy"]) <= 1.0  # Elec2 is about half UP, half DOWN
    assert table["drifts injected"] == "0"


# ---- streamlearn simulate --------------------------------------------------------------------------


@pytest.mark.parametrize("clip, ok", [("none", True), ("2.5", True), ("0.5", False), ("abc", False)])
def test_simulate_clip_as_the_sync_service(tmp_path, capsys, clip, ok):
    js = tmp_path / "sim.json"
    code, out, err = _run(capsys, "simulate", "--source", "sea", "--nodes", "3", "--n", "300", "--learner", "logreg",
                          "--protocol", "periodic:b=2", "--clip", clip, "--detector", "none", "--no-progress",
                          "--json", js)
    if ok:
        assert code == 0, err
        assert json.loads(js.read_text())["clipped_models"] >= 0
    else:
        assert code == 2 and "clip" in err and clip in err and out == ""


def test_simulate_refuses_a_drift_that_would_never_happen(capsys):
    # at or past the end of each node's stream it would be injected nowhere, and the run would look like a drift's
    code, out, err = _run(capsys, "simulate", "--source", "sea", "--nodes", "3", "--n", "300", "--learner", "logreg",
                          "--drift", "sudden@300", "--detector", "none", "--no-progress")
    assert code == 2 and "sudden@300" in err and "300 samples" in err and out == ""
    code, out, err = _run(capsys, "simulate", "--source", "sea", "--nodes", "3", "--n", "300", "--learner", "logreg",
                          "--drift", "sudden@299", "--no-progress")
    assert code == 0 and "drifts injected 3" in out, err


def test_simulate_dynamic(tmp_path, capsys):
    js = tmp_path / "sim.json"
    code, out, err = _run(capsys, "simulate", "--source", "sea", "--drift", "sudden@1000", "--nodes", "4",
                          "--protocol", "dynamic", "--delta", "0.5", "--b", "1", "--n", "2000", "--no-progress",
                          "--json", js)
    assert code == 0, err
    [row] = _row_table(out)
    assert row["protocol"] == "dynamic:delta=0.5,b=1"
    assert 0.6 < float(row["accuracy"]) <= 1.0
    assert {"transfers", "full", "partial", "MB sent", "cum. loss"} <= set(row)
    assert re.search(r"^nodes 4, 2000 samples per node", out, re.M)
    syncs = re.search(r"^syncs: (\d+) full, (\d+) partial; model transfers (\d+) \((\d+) up, (\d+) down\)", out, re.M)
    assert syncs, out
    drifts = re.search(r"^drifts injected (\d+), detected (\d+)", out, re.M)
    assert drifts, out
    assert f"wrote {js}" in out

    d = json.loads(js.read_text())
    assert d["protocol"] == row["protocol"]
    assert d["m"] == 4 and d["n_per_node"] == 2000
    assert f"{d['accuracy']:.4f}" == row["accuracy"]
    assert d["transfers"] == int(row["transfers"]) == int(syncs[3])
    assert d["transfers"] == d["comm"]["models_up"] + d["comm"]["models_down"]
    assert d["transfers"] > 0  # the drift at every node forces syncs
    assert (d["full_syncs"], d["partial_syncs"]) == (int(syncs[1]), int(syncs[2])) == (int(row["full"]),
                                                                                      int(row["partial"]))
    assert d["detection"]["drifts_injected"] == 4 == int(drifts[1])  # one sudden drift at each of 4 nodes
    assert d["detection"]["drifts_detected"] == int(drifts[2])
    assert [r["position"] for r in d["recovery"]] == [1000]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    import contextlib
    import io

    out = tmp_path_factory.mktemp("compare") / "cmp"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["simulate", "--source", "sea", "--drift", "sudden@300", "--nodes", "4", "--n", "600",
                     "--learner", "logreg", "--no-progress", "--compare", "periodic:b=1,4", "dynamic:delta=0.5,2",
                     "nosync", "--out", str(out)])
    return code, buf.getvalue(), out


EXPECTED_SETTINGS = ["periodic:b=1", "periodic:b=4", "dynamic:delta=0.5", "dynamic:delta=2", "nosync"]


def test_compare_table(comparison):
    code, out, path = comparison
    assert code == 0
    assert [r["protocol"] for r in _row_table(out)] == EXPECTED_SETTINGS + ["serial"]
    assert f"wrote {path}/comparison.json" in out


def test_compare_json(comparison):
    _, out, path = comparison
    d = json.loads((path / "comparison.json").read_text())
    assert [r["protocol"] for r in d["rows"]] == EXPECTED_SETTINGS + ["serial"]
    assert d["nodes"] == 4 and d["n_per_node"] == 600
    assert [(e["position"], e["node"]) for e in d["events"]] == [(300, node) for node in range(4)]
    by_name = {r["protocol"]: r for r in d["rows"]}
    assert by_name["nosync"]["transfers"] == 0
    # periodic averaging every step sends a model up and down at every node every round
    assert by_name["periodic:b=1"]["transfers"] == 2 * 4 * (600 // 10)
    assert by_name["periodic:b=1"]["transfers"] > by_name["periodic:b=4"]["transfers"]
    matched = d["matched_accuracy"]
    assert {"best_periodic_accuracy", "tolerance", "periodic", "dynamic", "ratio"} <= set(matched)
    assert matched["periodic"] in EXPECTED_SETTINGS and matched["dynamic"] in EXPECTED_SETTINGS


def test_compare_json_is_strict_json(comparison):
    _, _, path = comparison

    def reject(token):
        raise ValueError(f"not JSON: {token}")

    json.loads((path / "comparison.json").read_text(), parse_constant=reject)


def test_compare_plots(comparison):
    _, _, path = comparison
    for name in ("tradeoff.png", "timeline.png"):
        assert (path / name).read_bytes()[:8] == PNG_MAGIC, name


# ---- simulate --compare says whether syncing helps (and --json writes the comparison) --------------


def _opposed_csv(path: Path, n: int = 600) -> Path:
    """Two sites with opposite concepts (site s1's labels are s0's flipped): averaging can only hurt."""
    rng = np.random.default_rng(0)
    lines = ["site,a,b,cls"]
    for i in range(n):
        a, b = rng.uniform(-1, 1, 2)
        pos = (a + b > 0) == (i % 2 == 0)
        lines.append(f"s{i % 2},{a:.4f},{b:.4f},{'pos' if pos else 'neg'}")
    path.write_text("\n".join(lines) + "\n")
    return path


COMPARE_GRID = ["--compare", "periodic:b=1,4", "dynamic:delta=0.5", "nosync"]


def _compare(capsys, tmp_path, *argv) -> tuple[str, dict]:
    js = tmp_path / "verdict.json"
    code, out, err = _run(capsys, "simulate", *argv, "--learner", "logreg", "--detector", "none", "--no-progress",
                          "--out", tmp_path / "cmp", "--json", js)
    assert code == 0, err
    assert f"wrote {js}" in out
    d = json.loads(js.read_text())
    assert d == json.loads((tmp_path / "cmp" / "comparison.json").read_text())  # the same payload
    assert {"rows", "matched_accuracy", "verdict"} <= set(d)
    return out, d


def test_compare_says_no_sync_is_best_instead_of_a_ratio(tmp_path, capsys):
    path = _opposed_csv(tmp_path / "opposed.csv")
    out, d = _compare(capsys, tmp_path, "--source", f"csv:{path}", "--label", "cls", "--split", "key:site:s0=0,s1=1",
                      "--nodes", "2", "--lr", "0.5", "--batch-size", "2", *COMPARE_GRID)
    v = d["verdict"]
    acc = {r["protocol"]: r["accuracy"] for r in d["rows"]}
    best = max(acc[p] for p in acc if p not in ("nosync", "serial"))
    assert v["sync_helps"] is False and v["nosync_accuracy"] == acc["nosync"]
    assert v["nosync_margin_points"] == pytest.approx(100 * (acc["nosync"] - best)) and v["nosync_margin_points"] > 10
    assert re.search(rf"^no sync is best here \(by {v['nosync_margin_points']:.2f} points\)$", out, re.M), out
    assert "ratio" not in out and "matched accuracy" not in out
    assert v["matched"] is None


def test_compare_says_no_sync_is_best_when_synced_is_within_half_a_point(tmp_path, capsys):
    # an easy separable stream: each of 2 nodes learns it alone about as well as synced ones do
    path = _write_csv(tmp_path / "easy.csv", n=600)
    out, d = _compare(capsys, tmp_path, "--source", f"csv:{path}", "--label", "cls", "--nodes", "2", "--lr", "0.5",
                      "--batch-size", "5", *COMPARE_GRID)
    v = d["verdict"]
    assert v["sync_helps"] is False and -0.5 < v["nosync_margin_points"] <= 0
    line = (f"no sync is best here (synced settings are within 0.5 points: best {v['best_synced']} "
            f"{-v['nosync_margin_points']:+.2f})")
    assert line in out.splitlines(), out
    assert "ratio" not in out


def test_compare_prints_the_gain_and_ratio_where_syncing_helps(tmp_path, capsys):
    out, d = _compare(capsys, tmp_path, "--source", "sea", "--param", "noise=0.2", "--nodes", "8", "--n", "300",
                      "--lr", "1.0", "--batch-size", "2", *COMPARE_GRID)
    v, m = d["verdict"], d["matched_accuracy"]
    assert v["sync_helps"] is True and v["sync_gain_points"] >= 0.5
    assert v["matched"] == m and m["ratio"] is not None
    assert m["periodic_bytes"] == next(r["bytes"] for r in d["rows"] if r["protocol"] == m["periodic"])
    assert (f"syncing helps here: best {v['best_synced']} {v['best_synced_accuracy']:.4f}, "
            f"{v['sync_gain_points']:+.2f} points over no sync {v['nosync_accuracy']:.4f}") in out.splitlines()
    assert re.search(rf"^matched accuracy .*: ratio {m['ratio']:.2f}$", out, re.M), out
    assert "no sync is best" not in out


def test_compare_without_nosync_cannot_say(tmp_path, capsys):
    path = _write_csv(tmp_path / "easy.csv", n=600)
    out, d = _compare(capsys, tmp_path, "--source", f"csv:{path}", "--label", "cls", "--nodes", "2", "--lr", "0.5",
                      "--batch-size", "5", "--compare", "periodic:b=1,4", "dynamic:delta=0.5")
    assert d["verdict"]["sync_helps"] is None and d["verdict"]["reason"] == "no nosync row"
    assert re.search(r"^the comparison has no nosync row, so it cannot say whether syncing helps", out, re.M), out
    assert re.search(r"^matched accuracy .*: ratio \d+\.\d\d$", out, re.M), out


def test_simulate_csv(tmp_path, capsys):
    path = _write_csv(tmp_path / "good.csv", n=600)
    js = tmp_path / "sim.json"
    code, out, err = _run(capsys, "simulate", "--source", f"csv:{path}", "--label", "cls", "--nodes", "3",
                          "--learner", "logreg", "--lr", "0.5", "--protocol", "periodic", "--b", "2",
                          "--no-progress", "--json", js)
    assert code == 0, err
    [row] = _row_table(out)
    assert row["protocol"] == "periodic:b=2"
    assert float(row["accuracy"]) > 0.75
    assert re.search(r"^nodes 3, 200 samples per node", out, re.M)  # the file split round-robin
    d = json.loads(js.read_text())
    assert d["m"] == 3 and d["n_per_node"] == 200


def test_simulate_csv_bad_record(tmp_path, capsys):
    path = _write_csv(tmp_path / "bad.csv", n=600, replace={9: "0.5,0.4,oops,pos"})
    args = ["simulate", "--source", f"csv:{path}", "--label", "cls", "--nodes", "3", "--learner", "logreg",
            "--no-progress"]
    code, _, err = _run(capsys, *args)
    assert code == 2
    assert "row 9" in err and "column 'c'" in err and "'oops'" in err
    code, out, err = _run(capsys, *args, "--on-bad-record", "skip")
    assert code == 0, err
    # 599 good rows round-robin over 3 nodes: 200, 200, 199; cut to whole mini-batches of 10
    assert re.search(r"^nodes 3, 190 samples per node", out, re.M)


# ---- bad settings ----------------------------------------------------------------------------------


BAD_SETTINGS = {
    "unknown source": (["evaluate", "--source", "nope", "--n", "50"], ["'nope'", "source"]),
    "unknown source (simulate)": (["simulate", "--source", "nope", "--n", "50"], ["'nope'", "source"]),
    "bad drift position": (["evaluate", "--drift", "sudden@soon", "--n", "50"], ["sudden@soon"]),
    "bad drift form": (["evaluate", "--drift", "sudden", "--n", "50"], ["'sudden'", "KIND@POSITION"]),
    "unknown drift kind": (["simulate", "--drift", "wobble@10", "--nodes", "2", "--n", "50"], ["wobble"]),
    "unknown protocol": (["simulate", "--protocol", "gossip", "--nodes", "2", "--n", "50"], ["'gossip'", "protocol"]),
    "unknown protocol in grid": (["simulate", "--compare", "gossip:b=1", "--nodes", "2", "--n", "50"], ["'gossip'"]),
    "zero nodes": (["simulate", "--nodes", "0", "--n", "50"], ["--nodes", "0"]),
    "negative nodes": (["simulate", "--nodes", "-2", "--n", "50"], ["--nodes", "-2"]),
    "unknown learner": (["evaluate", "--learner", "svm", "--n", "50"], ["'svm'", "learner"]),
    "river learner in simulator": (["simulate", "--learner", "river-logreg", "--nodes", "2", "--n", "50"],
                                   ["--learner", "river-logreg"]),
    "bad hidden": (["evaluate", "--hidden", "8,x", "--n", "50"], ["--hidden", "8,x"]),
    "optimizer for river": (["evaluate", "--learner", "river-logreg", "--optimizer", "adam", "--n", "50"],
                            ["--optimizer"]),
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_bad_setting_exit_2_names_it(capsys, case):
    argv, expected = BAD_SETTINGS[case]
    learner = [] if "--learner" in argv else ["--learner", "logreg"]
    code, out, err = _run(capsys, *argv, *learner, "--no-progress")
    assert code == 2
    command = argv[0]
    assert err.startswith(f"streamlearn {command}: error:"), err
    for text in expected:
        assert text in err, (text, err)
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [
    [],
    ["frobnicate"],
    ["simulate", "--nodes", "many"],
    ["evaluate", "--on-bad-record", "ignore"],
    ["evaluate", "--optimizer", "rmsprop"],
])
def test_argparse_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage: streamlearn" in capsys.readouterr().err


def test_bad_setting_through_module_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "streamlearn.cli", "simulate", "--nodes", "0", "--n", "50",
                           "--learner", "logreg", "--no-progress"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "streamlearn simulate: error: --nodes: need an int >= 1, got 0"
    assert proc.stdout == ""


# ---- source parameters (--param) -------------------------------------------------------------------


def test_evaluate_source_params_reach_the_source(tmp_path, capsys):
    js = tmp_path / "r.json"
    code, _, err = _run(capsys, "evaluate", "--source", "rbf", "--param", "n_features=3", "--param",
                        "change_speed=0.01", "--learner", "logreg", "--n", "200", "--no-progress", "--json", js)
    assert code == 0, err
    settings = json.loads(js.read_text())["settings"]
    assert "features=['x0', 'x1', 'x2']" in settings["learner"]  # the model was laid out for 3 features


def test_simulate_source_params_reach_the_source(tmp_path, capsys):
    dims = []
    for extra in ([], ["--param", "n_features=3"]):
        js = tmp_path / f"sim{len(extra)}.json"
        code, _, err = _run(capsys, "simulate", "--source", "hyperplane", *extra, "--nodes", "2", "--n", "50",
                            "--learner", "logreg", "--protocol", "nosync", "--no-progress", "--json", js)
        assert code == 0, err
        dims.append(json.loads(js.read_text())["d"])
    assert dims[1] < dims[0]  # fewer features, a smaller model


@pytest.mark.parametrize("command,extra", [
    ("evaluate", ["--learner", "logreg"]),
    ("simulate", ["--learner", "logreg", "--nodes", "2"]),
    ("produce", ["--nodes", "2"]),  # fails before it looks for a broker
])
def test_source_param_values_are_checked_by_the_source(capsys, command, extra):
    code, _, err = _run(capsys, command, "--source", "sea", "--param", "noise=2", "--n", "50", "--no-progress", *extra)
    assert code == 2 and err.startswith(f"streamlearn {command}: error: noise") and "2.0" in err


@pytest.mark.parametrize("argv,expected", [
    (["--source", "sea", "--param", "width=3"], ["--param width", "'width'", "variant, noise"]),
    (["--source", "elec2", "--param", "variant=1"], ["--param variant", "valid: none"]),
    (["--source", "sea", "--param", "variant"], ["--param", "KEY=VALUE", "'variant'"]),
    (["--source", "sea", "--param", "variant=1", "--param", "variant=2"], ["--param variant", "twice"]),
    (["--source", "sea", "--param", "variant=two"], ["variant", "'two'"]),
])
def test_bad_source_params_name_the_key(capsys, argv, expected):
    code, out, err = _run(capsys, "evaluate", *argv, "--n", "50", "--learner", "logreg", "--no-progress")
    assert code == 2 and out == ""
    for text in expected:
        assert text in err, (text, err)


def test_csv_params_with_flags_of_their_own(tmp_path, capsys):
    path = _write_csv(tmp_path / "good.csv")
    code, _, err = _run(capsys, "evaluate", "--source", f"csv:{path}", "--label", "cls", "--param", "label=a",
                        "--no-progress")
    assert code == 2 and "--param label" in err and "--label" in err
    code, _, err = _run(capsys, "evaluate", "--source", f"csv:{path}", "--label", "cls", "--param", "nope=1",
                        "--no-progress")
    assert code == 2 and "delimiter" in err and "max_categories" in err and "on_bad_record" not in err


def test_drift_command_keeps_its_own_param():
    from streamlearn.cli import build_parser

    args = build_parser().parse_args(["drift", "--kind", "feature-shift", "--param", "shift=2", "--param", "width=0"])
    assert args.param == ["shift=2", "width=0"]
    args = build_parser().parse_args(["evaluate", "--param", "variant=1"])
    assert args.source_param == ["variant=1"]


# ---- any CSV: delimiters, text categories, dates ---------------------------------------------------


def _mixed_csv(path: Path, n: int = 300) -> Path:
    """Semicolons; a date column (dropped), a text category that decides the label, a noise column."""
    rng = np.random.default_rng(1)
    lines = ["date;plant;load;state"]
    for i in range(n):
        plant = ["gas", "coal", "wind"][i % 3]
        lines.append(f"2024-02-{1 + i // 24 % 28:02d}T{i % 24:02d}:00;{plant};{rng.normal():.3f};"
                     f"{'high' if plant == 'wind' else 'low'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_evaluate_csv_with_semicolons_a_category_and_a_date(tmp_path, capsys):
    path = _mixed_csv(tmp_path / "mixed.csv")
    js = tmp_path / "r.json"
    code, out, err = _run(capsys, "evaluate", "--source", f"csv:{path}", "--label", "state", "--learner", "logreg",
                          "--lr", "0.5", "--no-progress", "--json", js)
    assert code == 0, err
    assert "note:" in err and "'date'" in err
    table = _kv_table(out)
    assert table["samples"] == "300" and table["skipped bad records"] == "0"
    assert table["one-hot text columns"] == "plant" and table["values outside the categories"] == "0"
    assert float(table["accuracy"]) > 0.9  # the category decides the label
    learner = json.loads(js.read_text())["settings"]["learner"]
    assert "features=['plant_coal', 'plant_gas', 'plant_wind', 'load']" in learner


def test_evaluate_csv_declared_categories(tmp_path, capsys):
    path = _mixed_csv(tmp_path / "mixed.csv")
    code, out, err = _run(capsys, "evaluate", "--source", f"csv:{path}", "--label", "state", "--learner",
                          "river-logreg", "--categorical", "plant=wind|gas", "--no-progress")
    assert code == 0, err
    assert _kv_table(out)["values outside the categories"] == "100"  # every coal row: all zeros
    code, _, err = _run(capsys, "evaluate", "--source", f"csv:{path}", "--label", "state", "--categorical",
                        "plant", "--no-progress")
    assert code == 2 and "COLUMN=a|b|c" in err
    code, _, err = _run(capsys, "evaluate", "--source", "sea", "--categorical", "a=x", "--n", "50", "--no-progress")
    assert code == 2 and "--categorical" in err


def test_simulate_csv_split_by_a_text_key(tmp_path, capsys):
    lines = ["machine,temp,state"] + [f"{['press-1', 'press-2', 'lathe'][i % 3]},{i % 7},{'ok' if i % 7 < 4 else 'hot'}"
                                      for i in range(600)]
    path = tmp_path / "keyed.csv"
    path.write_text("\n".join(lines) + "\n")
    code, out, err = _run(capsys, "simulate", "--source", f"csv:{path}", "--label", "state", "--split",
                          "key:machine:press-1=0,press-2=1,lathe=2", "--nodes", "3", "--learner", "logreg",
                          "--protocol", "nosync", "--no-progress")
    assert code == 0, err
    assert re.search(r"^nodes 3, 200 samples per node", out, re.M)  # one machine per node
    code, out, err = _run(capsys, "simulate", "--source", f"csv:{path}", "--label", "state", "--split",
                          "key:machine:hash", "--nodes", "2", "--learner", "logreg", "--protocol", "nosync",
                          "--no-progress")
    assert code == 0, err  # by hash: press-1 and press-2 on node 0, lathe on node 1


# ---- evaluate's JSON agrees with its table ----------------------------------------------------------


def test_evaluate_json_counts_skipped_records_like_the_table(tmp_path, capsys):
    path = _all_bad(tmp_path)
    js = tmp_path / "r.json"
    code, out, _ = _run(capsys, "evaluate", "--source", f"csv:{path}", "--label", "cls", "--learner", "mlp",
                        "--no-progress", "--on-bad-record", "skip", "--missing", "error", "--json", js)
    assert code == 0
    d = json.loads(js.read_text())
    assert d["n_bad"] == int(_kv_table(out)["skipped bad records"]) == len(BAD_LINES)
    assert d["settings"]["learner"].startswith('TorchLearner (arch="mlp"') and d["settings"]["learner"].endswith(")")


# ---- the listing says what the CLI does ------------------------------------------------------------


def test_streams_lists_learner_parameters_as_the_cli_uses_them(streams_output):
    learners = _sections(streams_output)["Learners"]
    for name in ("logreg", "mlp", "cnn"):
        assert "scale = True" in learners[name] and "seed = 0" in learners[name]
    assert not any(line.startswith(("hidden", "kernel_size")) for line in learners["logreg"])
    assert not any(line.startswith("kernel_size") for line in learners["mlp"])
    assert any(line.startswith("kernel_size") for line in learners["cnn"])
    assert "--param KEY=VALUE" in streams_output


def test_the_benchmarks_recommended_setting_runs_as_simulate_takes_it(tmp_path, capsys):
    """bench/results/sync_value.json's ``recommended`` is a --protocol and flags simulate accepts as they are."""
    rec = json.loads((Path(__file__).parents[1] / "bench" / "results" / "sync_value.json").read_text())["recommended"]
    js = tmp_path / "rec.json"
    code, out, err = _run(capsys, "simulate", "--source", "sea", "--nodes", "3", "--n", "300", "--no-progress",
                          "--protocol", rec["protocol"], *rec["args"], "--json", js)
    assert code == 0, err
    [row] = _row_table(out)
    assert row["protocol"] == rec["protocol"] and int(row["transfers"]) > 0


# ---- help, version, defaults, Kafka flags ----------------------------------------------------------

def test_version_and_help_start_with_plain_words(capsys):
    from streamlearn.cli import build_parser

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("streamlearn ")
    text = build_parser().format_help()
    assert "``" not in text and text.index("Learn online") < text.index("positional arguments")


def _subparser(name):
    from streamlearn.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command,config", [("node", "streamlearn.kafka.node:NodeConfig"),
                                            ("sync", "streamlearn.kafka.sync_service:SyncConfig")])
def test_service_flags_show_the_defaults_the_service_uses(command, config):
    import dataclasses
    import importlib

    module, _, name = config.partition(":")
    fields = {f.name: f.default for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    p = _subparser(command)
    checked = 0
    for action in p._actions:
        if action.dest in fields and action.default is not None and fields[action.dest] is not dataclasses.MISSING:
            assert action.default == fields[action.dest], (command, action.dest)
            checked += 1
    assert checked >= 5
    assert "(default: " in p.format_help()


@pytest.mark.parametrize("command", ["node", "sync", "produce"])
def test_services_take_bootstrap_and_prefix(command):
    argv = {"node": ["--id", "0", "--source", "sea"], "sync": [], "produce": []}[command]
    args = _subparser(command).parse_args([*argv, "--bootstrap", "10.0.0.1:9092", "--prefix", "plant3"])
    assert (args.bootstrap, args.prefix) == ("10.0.0.1:9092", "plant3")


def test_node_scales_features_by_default_like_simulate(monkeypatch):
    from streamlearn import cli

    seen = {}

    def fake_run(args, service_cls, cfg, make_metrics):
        seen["cfg"] = cfg
        return {}

    monkeypatch.setattr(cli, "_run_service", fake_run)
    monkeypatch.setattr(cli, "_setup_logging", lambda verbose=False: None)
    assert main(["node", "--id", "0", "--source", "sea", "--learner", "mlp", "--bootstrap", "127.0.0.1:1"]) == 0
    assert seen["cfg"].learner_params["scale"] is True and seen["cfg"].bootstrap == "127.0.0.1:1"
    assert main(["node", "--id", "0", "--source", "sea", "--learner", "mlp", "--no-scale"]) == 0
    assert seen["cfg"].learner_params["scale"] is False


def test_a_header_error_does_not_suggest_skipping_records(tmp_path, capsys):
    # --on-bad-record skip passes over bad records; a label missing from the header is not one
    path = _write_csv(tmp_path / "good.csv")
    code, _, err = _run(capsys, "evaluate", "--source", f"csv:{path}", "--label", "no_such", "--no-progress")
    assert code == 2 and "missing column" in err and "'no_such'" in err
    assert "--on-bad-record" not in err
