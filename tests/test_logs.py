"""streamlearn.logs: --log-level / --log-format on every command, JSON lines, kafka-python held back."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys

import pytest

from streamlearn.cli import build_parser
from streamlearn.errors import ConfigError
from streamlearn.logs import reset_logging, setup_logging


@pytest.fixture
def out():
    stream = io.StringIO()
    yield stream
    reset_logging()


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_parse_with_time_level_logger_message_and_exception(out):
    setup_logging("INFO", "json", stream=out)
    log = logging.getLogger("streamlearn.test_logs")
    log.info("multi\nline %s", "message")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    first, second = _lines(out)
    assert set(first) == {"time", "level", "logger", "message"}
    assert first["level"] == "INFO" and first["logger"] == "streamlearn.test_logs"
    assert first["message"] == "multi\nline message"
    assert first["time"].endswith("+00:00") and "T" in first["time"]
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exception"]


def test_level_filters_and_a_second_setup_replaces_the_first(out):
    setup_logging("INFO", "text", stream=io.StringIO())
    setup_logging("warning", "json", stream=out)  # any case
    log = logging.getLogger("streamlearn.test_logs")
    log.info("hidden")
    log.warning("shown")
    log.error("shown too")
    assert [line["message"] for line in _lines(out)] == ["shown", "shown too"]
    assert sum(getattr(h, "_streamlearn", False) for h in logging.getLogger().handlers) == 1


def test_text_format(out):
    setup_logging("DEBUG", "text", stream=out)
    logging.getLogger("streamlearn.test_logs").debug("plain %d", 7)
    assert out.getvalue().rstrip().endswith("streamlearn.test_logs DEBUG plain 7")


@pytest.mark.parametrize("level, kafka_level", [("DEBUG", logging.DEBUG), ("INFO", logging.WARNING),
                                                ("WARNING", logging.WARNING), ("ERROR", logging.ERROR)])
def test_kafka_noise_held_at_warning_unless_debug(out, level, kafka_level):
    setup_logging(level, "json", stream=out)
    assert logging.getLogger("kafka.net.manager").getEffectiveLevel() == kafka_level
    logging.getLogger("kafka.conn").info("connected")
    assert (out.getvalue() != "") == (level == "DEBUG")


def test_environment_gives_the_defaults_and_bad_values_name_their_source(out, monkeypatch):
    monkeypatch.setenv("STREAMLEARN_LOG_LEVEL", "ERROR")
    monkeypatch.setenv("STREAMLEARN_LOG_FORMAT", "json")
    setup_logging(stream=out)
    logging.getLogger("streamlearn.test_logs").warning("hidden")
    logging.getLogger("streamlearn.test_logs").error("shown")
    assert [line["message"] for line in _lines(out)] == ["shown"]
    monkeypatch.setenv("STREAMLEARN_LOG_LEVEL", "chatty")
    with pytest.raises(ConfigError, match="STREAMLEARN_LOG_LEVEL: expected one of DEBUG, INFO, WARNING, ERROR, "
                                          "got 'chatty'"):
        setup_logging()
    with pytest.raises(ConfigError, match="--log-format: expected one of text, json, got 'xml'"):
        setup_logging("INFO", "xml")


def _subcommands(parser: argparse.ArgumentParser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield path + (name,), child
                yield from _subcommands(child, path + (name,))


def test_every_command_takes_the_options_before_or_after_the_subcommand():
    parser = build_parser()
    commands = list(_subcommands(parser))
    names = {" ".join(path) for path, _ in commands}
    assert {"node", "sync", "produce", "demo", "connect csv", "connect river", "broker"} <= names
    for path, child in commands:
        flags = {flag for a in child._actions for flag in a.option_strings}
        assert {"--log-level", "--log-format"} <= flags, path
    args = parser.parse_args(["--log-level", "debug", "--log-format", "json", "streams"])
    assert (args.log_level, args.log_format) == ("DEBUG", "json")
    args = parser.parse_args(["--log-level", "ERROR", "connect", "river", "synth.SEA", "--log-format", "json"])
    assert (args.log_level, args.log_format) == ("ERROR", "json")
    assert parser.parse_args(["streams"]).log_level is None  # the environment, else INFO, decides
    with pytest.raises(SystemExit):
        parser.parse_args(["streams", "--log-level", "LOUD"])


def _run(argv: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEARN_LOG_")}
    return subprocess.run([sys.executable, "-m", "streamlearn.cli", *argv], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=env)


def _json_stderr(proc: subprocess.CompletedProcess) -> list[dict]:
    # every stderr line is a log record: a line that is not JSON fails here
    return [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]


def test_connect_process_shows_its_info_line_as_json(settings, prefix, tmp_path):
    proc = _run(["connect", "river", "synth.SEA", "--param", "seed=7", "--limit", "20", "--node", "0",
                 "--bootstrap", settings.bootstrap_servers, "--prefix", prefix, "--progress", "0",
                 "--log-format", "json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _json_stderr(proc)
    assert any(r["level"] == "INFO" and r["logger"] == "streamlearn.connectors.river_source"
               and r["message"].startswith("inferred schema") for r in records), records
    assert not [r for r in records if r["logger"].startswith("kafka") and r["level"] in ("DEBUG", "INFO")]
    # --log-level WARNING drops it
    quiet = _run(["connect", "river", "synth.SEA", "--limit", "5", "--node", "0", "--log-level", "WARNING",
                  "--bootstrap", settings.bootstrap_servers, "--prefix", prefix, "--progress", "0"], tmp_path)
    assert quiet.returncode == 0 and "inferred schema" not in quiet.stderr, quiet.stderr[-3000:]


def test_produce_process_logs_and_lets_kafka_speak_only_at_debug(settings, prefix, tmp_path):
    argv = ["produce", "--source", "sea", "--nodes", "1", "--n", "50", "--rate", "0", "--no-progress",
            "--bootstrap", settings.bootstrap_servers, "--prefix", prefix, "--log-format", "json"]
    proc = _run(argv, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # kafka-python's WARNINGs may show (a slow machine), its INFO and DEBUG chatter not
    assert not [r for r in _json_stderr(proc) if r["logger"].startswith("kafka") and r["level"] in ("DEBUG", "INFO")]
    debug = _run(["--log-level", "DEBUG", *argv], tmp_path)
    assert debug.returncode == 0, debug.stderr[-3000:]
    records = _json_stderr(debug)
    assert any(r["logger"].startswith("kafka") and r["level"] == "DEBUG" for r in records)


def test_kafka_lines_come_without_their_tracebacks_unless_debug():
    import io
    import logging

    from streamlearn.logs import reset_logging, setup_logging

    for level, shown in (("INFO", False), ("DEBUG", True)):
        out = io.StringIO()
        setup_logging(level, "text", stream=out)
        try:
            try:
                raise ConnectionResetError(104, "Connection reset by peer")
            except ConnectionResetError:
                logging.getLogger("kafka.net.transport").error("socket disconnected", exc_info=True)
                logging.getLogger("streamlearn.kafka.node").error("ours", exc_info=True)
        finally:
            reset_logging()
        text = out.getvalue()
        assert "socket disconnected" in text and "ours" in text
        assert text.count("Traceback") == (2 if shown else 1), text  # ours always keeps its traceback


def test_a_closing_clients_cancelled_metadata_refresh_is_not_an_error_unless_debug():
    from kafka.errors import Cancelled, KafkaConnectionError

    for level, shown in (("INFO", False), ("DEBUG", True)):
        out = io.StringIO()
        setup_logging(level, "text", stream=out)
        try:
            logging.getLogger("kafka.cluster").error("Metadata refresh: failed %s", Cancelled())
            logging.getLogger("kafka.cluster").error("Metadata refresh: failed %s", KafkaConnectionError("refused"))
        finally:
            reset_logging()
        text = out.getvalue()
        assert ("Cancelled" in text) is shown, text
        assert "refused" in text  # a refresh that did fail is still said
