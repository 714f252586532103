"""Bounded line reading of the file connectors."""

from __future__ import annotations

import gzip
import io

import pytest

from streamlearn.connectors.lines import open_binary, read_lines
from streamlearn.errors import ConfigError


def test_lines_are_numbered_and_long_ones_cut_without_being_held():
    data = b"a\r\n\n" + b"x" * 100_000 + b"\nb"
    out = list(read_lines(io.BytesIO(data), max_bytes=10))
    assert out == [(1, b"a", None), (2, b"", None), (3, b"x" * 10, 100_001), (4, b"b", None)]


def test_line_exactly_at_the_limit_with_crlf_is_kept():
    assert list(read_lines(io.BytesIO(b"abcd\r\nef"), max_bytes=4)) == [(1, b"abcd", None), (2, b"ef", None)]


def test_gzip_and_errors(tmp_path):
    path = tmp_path / "a.csv.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"h\n1\n")
    assert [line for _, line, _ in read_lines(open_binary(path), 100)] == [b"h", b"1"]
    (tmp_path / "b.gz").write_bytes(b"not gzip")
    with pytest.raises(ConfigError):
        open_binary(tmp_path / "b.gz")
    with pytest.raises(ConfigError, match="cannot read"):
        open_binary(tmp_path / "missing.csv")
