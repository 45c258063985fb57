"""The two ConfigMgr log formats, byte for byte against the examples in docs/protocol-notes.md, ConfigMgr §5."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmglab.core.logs import (
    CMTraceFormatter,
    SMSTraceFormatter,
    cmtrace_logger,
    format_cmtrace,
    format_smstrace,
    held_lines,
    smstrace_logger,
)
from tests.support.waits import WAIT

CMTRACE_EXAMPLE = (
    '<![LOG[Sending StatusMessage]LOG]!><time="10:35:33.086-60" date="09-07-2022" '
    'component="TSManager" context="" type="1" thread="2000" file="libsmsmessaging.cpp:4570">'
)
SMSTRACE_EXAMPLE = (
    "RequestUri: /CCM_PROXY_SERVERAUTH/72057594037937981/CCM_STS  RequestCount: 1  "
    "RequestSize: 1974 Bytes  ResponseCount: 1  ResponseSize: 1566 Bytes  "
    "AverageElapsedTime: 218 ms~~  $$<CMGService><06-24-2020 15:31:46.376+00>"
    "<thread=4992 (0x1380)>"
)


def test_cmtrace_line_matches_the_research_example() -> None:
    when = datetime(2022, 9, 7, 10, 35, 33, 86000, tzinfo=timezone(timedelta(hours=1)))  # UTC+1: bias -60
    line = format_cmtrace(
        "Sending StatusMessage", component="TSManager", when=when, type_=1, thread=2000, file="libsmsmessaging.cpp:4570"
    )
    assert line == CMTRACE_EXAMPLE


def test_cmtrace_bias_in_utc_and_west_of_utc() -> None:
    utc = datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)
    assert 'time="03:04:05.006+000" date="01-02-2026"' in format_cmtrace("x", component="c", when=utc)
    west = utc.astimezone(timezone(timedelta(hours=-5)))
    assert 'time="22:04:05.006+300"' in format_cmtrace("x", component="c", when=west)


def test_smstrace_line_matches_the_cmgservice_example() -> None:
    when = datetime(2020, 6, 24, 15, 31, 46, 376000, tzinfo=UTC)
    message = (
        "RequestUri: /CCM_PROXY_SERVERAUTH/72057594037937981/CCM_STS  RequestCount: 1  "
        "RequestSize: 1974 Bytes  ResponseCount: 1  ResponseSize: 1566 Bytes  AverageElapsedTime: 218 ms\n"
    )
    assert format_smstrace(message, component="CMGService", when=when, thread=4992) == SMSTRACE_EXAMPLE


def test_file_loggers_write_crlf_records_in_their_format(tmp_path: Path) -> None:
    client_log = tmp_path / "Windows/CCM/Logs/CcmMessaging.log"
    cmtrace_logger(client_log, "CcmMessaging").info("Target URL scheme is HTTPS: https://cmg.lab.test/x")
    cmtrace_logger(client_log, "CcmMessaging").warning("second")
    raw = client_log.read_bytes()
    assert raw.count(b"\r\n") == 2
    first, second = raw.decode().split("\r\n")[:2]
    assert first.startswith("<![LOG[Target URL scheme is HTTPS: https://cmg.lab.test/x]LOG]!><time=")
    assert 'component="CcmMessaging"' in first and 'type="1"' in first and 'file="test_log_formats.py:' in first
    assert 'type="2"' in second

    site_log = tmp_path / "CCM_STS.log"
    smstrace_logger(site_log, "CCM_STS").info("ProcessRequest - Start")
    line = site_log.read_bytes().decode()
    assert line.startswith("ProcessRequest - Start  $$<CCM_STS><") and line.endswith(")>\r\n")


# a record's creation time in whole microseconds between 2001 and 2096: the float a LogRecord holds
created_times = st.integers(1_000_000_000 * 1_000_000, 4_000_000_000 * 1_000_000).map(lambda us: us / 1_000_000)
log_records = st.tuples(
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=80),
    st.sampled_from([logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL]),
    created_times,
    st.integers(0, 2**32 - 1),
)


def _record(message: str, level: int, created: float, thread: int) -> logging.LogRecord:
    record = logging.LogRecord("cmglab.test", level, "/src/ccmexec.py", 42, message, None, None)
    record.created = created
    record.component = "CcmExec"
    record.tid = thread
    return record


@settings(max_examples=150, deadline=None, database=None)
@given(st.lists(log_records, min_size=1, max_size=6))
def test_formatters_write_format_cmtrace_and_format_smstrace_byte_for_byte(
    records: list[tuple[str, int, float, int]],
) -> None:
    # one formatter per format across several records: its per-second stamp cache is exercised too
    cmtrace, smstrace = CMTraceFormatter(), SMSTraceFormatter()
    types = {logging.DEBUG: 1, logging.INFO: 1, logging.WARNING: 2, logging.ERROR: 3, logging.CRITICAL: 3}
    for message, level, created, thread in records:
        record = _record(message, level, created, thread)
        when = datetime.fromtimestamp(created).astimezone()
        assert cmtrace.format(record) == format_cmtrace(
            message, component="CcmExec", when=when, type_=types[level], thread=thread, file="ccmexec.py:42"
        )
        assert smstrace.format(record) == format_smstrace(message, component="CcmExec", when=when, thread=thread)


def test_an_sms_trace_logger_writes_what_loggings_own_path_writes(tmp_path: Path) -> None:
    """The SMS-trace loggers write a plain message without a LogRecord: each line is the one the formatter makes of
    the record logging's own path makes (args, a second handler or a closed file take that path itself)."""
    path = tmp_path / "SMS_CLOUD_PROXYCONNECTOR.log"
    log = smstrace_logger(path, "SMS_CLOUD_PROXYCONNECTOR")
    messages = ["Switched to internal URL.", "two\nlines \r\n here", "", "ünïcode ✓", "100% %s %d"]
    for message in messages:
        log.info(message)
    log.warning("with %s", "args")
    log.handlers[0].close()  # logging's path reopens a closed file (FileHandler)
    log.info("after close")
    reference = SMSTraceFormatter()
    lines = path.read_bytes().decode().split("\r\n")
    assert lines[-1] == "" and len(lines) == len(messages) + 3
    for line, message in zip(lines, [*messages, "with args", "after close"], strict=False):
        text, _, stamp = line.rpartition("  $$<")
        thread = int(stamp.rsplit("thread=", 1)[1].split(" ")[0])
        record = _record(message, logging.INFO, 0.0, thread)
        expected = reference.format(record)
        assert text == expected.rpartition("  $$<")[0]  # the same text (the time differs: another record)
        assert stamp.startswith("SMS_CLOUD_PROXYCONNECTOR><") and stamp.endswith(f"(0x{thread:04X})>")
    extra = logging.FileHandler(tmp_path / "copy.log")
    log.addHandler(extra)  # a second handler: logging's path, both files written
    log.info("copied")
    extra.close()
    assert (tmp_path / "copy.log").read_text().strip() == "copied"
    assert path.read_bytes().decode().split("\r\n")[-2].startswith("copied  $$<SMS_CLOUD_PROXYCONNECTOR><")


def _messages(path: Path) -> list[tuple[str, int]]:
    """(message, thread ID) of each SMS-trace line of PATH, in file order."""
    lines = path.read_bytes().decode().split("\r\n")
    assert lines[-1] == ""
    out = []
    for line in lines[:-1]:
        text, _, stamp = line.rpartition("  $$<")
        out.append((text, int(stamp.rsplit("thread=", 1)[1].split(" ")[0])))
    return out


def test_held_lines_are_written_together_in_order_with_each_threads_own_id(tmp_path: Path) -> None:
    """A request's lines held (`held_lines`) land in one piece at the block's end, in the order logged: a request
    that logs its whole block while another is halfway through its own is not interleaved with it, and each line
    names its own thread, as a line written at once does."""
    path = tmp_path / "CCM_STS.log"
    log = smstrace_logger(path, "CCM_STS")
    halfway, other_done = threading.Event(), threading.Event()
    ids: dict[str, int] = {}

    def first() -> None:
        ids["first"] = threading.get_native_id()
        with held_lines(log):
            log.info("first 1")
            log.info("first 2")
            halfway.set()
            assert other_done.wait(WAIT)
            log.info("first 3")

    def second() -> None:
        ids["second"] = threading.get_native_id()
        assert halfway.wait(WAIT)
        with held_lines(log):
            log.info("second 1")
            log.info("second 2")
        other_done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    assert _messages(path) == [
        ("second 1", ids["second"]),
        ("second 2", ids["second"]),
        ("first 1", ids["first"]),
        ("first 2", ids["first"]),
        ("first 3", ids["first"]),
    ]


def test_held_lines_are_written_when_the_block_raises(tmp_path: Path) -> None:
    """A failing request loses no line: what it logged before the error, its failure line last, is written."""
    path = tmp_path / "CCM_STS.log"
    log = smstrace_logger(path, "CCM_STS")
    with pytest.raises(RuntimeError), held_lines(log):
        log.info("ProcessRequest - Start")
        log.warning("Failed to issue token")
        raise RuntimeError("the database is gone")
    assert [text for text, _ in _messages(path)] == ["ProcessRequest - Start", "Failed to issue token"]


def test_a_line_on_loggings_own_path_comes_after_the_lines_held_before_it(tmp_path: Path) -> None:
    """A line with args takes logging's path, which writes at once: the lines held before it are written first, so
    the file keeps the order they were logged in; a nested block leaves its lines to the outer one."""
    path = tmp_path / "MP_RegistrationManager.log"
    log = smstrace_logger(path, "MP_RegistrationManager")
    with held_lines(log):
        log.info("first")
        with held_lines(log):
            log.info("nested")
        assert not path.read_bytes()  # held until the outer block ends
        log.info("with %s", "args")
        log.info("last")
    assert [text for text, _ in _messages(path)] == ["first", "nested", "with args", "last"]


def test_held_lines_of_another_logger_are_written_as_logged(tmp_path: Path) -> None:
    """Any logger but an SMS-trace file logger is unchanged inside the block: each line written when logged."""
    path = tmp_path / "CcmMessaging.log"
    log = cmtrace_logger(path, "CcmMessaging")
    with held_lines(log):
        log.info("at once")
        assert "at once" in path.read_text()
