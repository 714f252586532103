"""The command line's --split key:COLUMN (one node per key, --nodes by default) and --missing."""

import re

from streamlearn.cli import main


def _csv(tmp_path):
    rows = ["site,a,b,y"]
    for i in range(600):
        a = "" if i % 17 == 5 else f"{(i % 7) / 7:.3f}"  # gaps: imputed by default
        label = "" if i % 50 == 49 else str(int(i % 7 < 3))  # rows without a label: left out, counted
        rows.append(f"{['north', 'south', 'east'][i % 3]},{a},{(i % 5) / 5:.2f},{label}")
    path = tmp_path / "sites.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_simulate_gets_one_node_per_key_and_counts_missing_values(tmp_path, capsys):
    path = _csv(tmp_path)
    code = main(["simulate", "--source", f"csv:{path}", "--label", "y", "--split", "key:site", "--learner", "logreg",
                 "--protocol", "nosync", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert re.search(r"^nodes 3, ", out, re.M)
    assert re.search(r"^missing values: \d+ imputed .* 12 records without a label left out", out, re.M), out
    code = main(["simulate", "--source", f"csv:{path}", "--label", "y", "--split", "key:site", "--nodes", "4",
                 "--learner", "logreg", "--no-progress"])
    _, err = capsys.readouterr()
    assert code == 2 and "3 distinct 'site' values but nodes is 4" in err
    code = main(["simulate", "--source", f"csv:{path}", "--label", "y", "--split", "key:site", "--missing", "skip",
                 "--learner", "logreg", "--protocol", "nosync", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert re.search(r"^missing values: \d+ rows with a missing value skipped", out, re.M), out


def test_evaluate_shows_the_missing_counts_and_error_keeps_the_old_rule(tmp_path, capsys):
    path = _csv(tmp_path)
    code = main(["evaluate", "--source", f"csv:{path}", "--label", "y", "--learner", "logreg", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert re.search(r"missing values imputed\s+3[45]\b", out) and re.search(r"records without a label left out\s+12",
                                                                            out), out
    code = main(["evaluate", "--source", f"csv:{path}", "--label", "y", "--learner", "logreg", "--no-progress",
                 "--missing", "error"])
    _, err = capsys.readouterr()
    assert code == 2 and "missing value" in err and "column 'a'" in err
