"""``--split key:COLUMN``: one node per distinct key value, numbered in order of first appearance."""

import numpy as np
import pytest

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.streams import CSVSource, STAGGERStream, Split, make_source, node_streams, parse_split


def _csv(tmp_path, keys):
    path = tmp_path / "k.csv"
    path.write_text("site,t,y\n" + "".join(f"{k},{i},{i % 2}\n" for i, k in enumerate(keys)))
    return path


def test_ids_follow_first_appearance_and_no_two_keys_share_a_node(tmp_path):
    keys = ["Wanliu", "Aotizhongxin", "Wanliu", "Changping", "Aotizhongxin", "Dongsi", "Changping"]
    path = _csv(tmp_path, keys)
    split = Split(CSVSource(path, label="y", key="site"), None, key="site", how="first")
    assert split.nodes == 4
    assert split.key_nodes() == {"Wanliu": 0, "Aotizhongxin": 1, "Changping": 2, "Dongsi": 3}
    for k, part in enumerate(split.streams()):
        rows = [i for i, key in enumerate(keys) if split.key_nodes()[key] == k]
        assert part.to_arrays(100)[0][:, 0].tolist() == [float(i) for i in rows]  # in order, the key left out


def test_key_column_means_first_seen_everywhere(tmp_path):
    assert parse_split("key:site") == {"key": "site", "how": "first"}
    assert parse_split("key:site:hash")["how"] == "hash"  # the hash is still there, by name
    keys = ["b", "a", "b", "c"] * 50
    path = _csv(tmp_path, keys)
    parts = node_streams(f"csv:{path}", None, split="key:site", label="y")
    assert [p.n_samples for p in parts] == [100, 50, 50]
    assert len(node_streams(f"csv:{path}", 3, split="key:site", label="y")) == 3


def test_a_node_count_that_disagrees_names_both_numbers(tmp_path):
    path = _csv(tmp_path, ["x", "y", "z", "x"])
    with pytest.raises(ConfigError) as info:
        node_streams(f"csv:{path}", 2, split="key:site", label="y")
    assert "3 distinct 'site' values" in str(info.value) and "nodes is 2" in str(info.value)
    with pytest.raises(ConfigError, match="number of nodes"):
        node_streams(f"csv:{path}", None, split="round-robin", label="y")


def test_numeric_keys_and_an_endless_source():
    elec = make_source("elec2")
    day = elec.to_arrays(10**6)[0][:, 0]
    split = Split(elec, None, key="day", how="first")
    order = list(dict.fromkeys(day.tolist()))
    assert split.nodes == 7 and list(split.key_nodes()) == order
    assert np.array_equal(split.streams()[0].to_arrays(10**6)[0], elec.to_arrays(10**6)[0][day == order[0]][:, 1:])
    # an endless source: numbered as values come; a value beyond the m-th distinct one is an error naming it
    parts = Split(STAGGERStream(seed=0), 3, key="color", how="first").streams()
    assert all(len(p.to_arrays(50)[1]) == 50 for p in parts)
    with pytest.raises(BadRecordError, match="only 2 nodes"):
        Split(STAGGERStream(seed=0), 2, key="color", how="first").streams()[0].to_arrays(50)
    with pytest.raises(ConfigError, match="endless"):
        Split(STAGGERStream(seed=0), None, key="color", how="first")


def test_the_beijing_slice_gets_its_twelve_stations(tmp_path):
    from pathlib import Path

    data = Path(__file__).resolve().parents[1] / "data" / "beijing_slice.csv.gz"
    parts = node_streams(f"csv:{data}", None, split="key:station", label="pm25_high", on_missing="impute")
    assert len(parts) == 12 and all(p.n_samples > 1500 for p in parts)
    assert "time" not in parts[0].feature_names and "station" not in parts[0].feature_names
