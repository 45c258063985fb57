"""The two ConfigMgr log formats (docs/protocol-notes.md, ConfigMgr §5), as formatters and file loggers.

CMTrace (clients):
    <![LOG[text]LOG]!><time="HH:MM:SS.mmm+BIAS" date="MM-DD-YYYY" component="C" context="" type="1"
        thread="N" file="f.cpp:1">   (one line)
SMS trace (site systems, CMG):
    text  $$<Component><MM-DD-YYYY HH:MM:SS.mmm+BIAS><thread=N (0xHEX)>
BIAS is the Windows time-zone bias in minutes (UTC = local + bias). Records end in CRLF; an SMS-trace
message's line breaks become `~~`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

_TYPES = {logging.DEBUG: 1, logging.INFO: 1, logging.WARNING: 2, logging.ERROR: 3, logging.CRITICAL: 3}


def _bias(when: datetime) -> int:
    offset = when.utcoffset()
    return -int(offset.total_seconds() // 60) if offset else 0


def render_cmtrace(
    message: str,
    *,
    component: str,
    date: str,
    time: str,
    ms: int,
    bias: int,
    type_: int = 1,
    thread: int = 0,
    file: str = "",
    context: str = "",
) -> str:
    """One CMTrace record from its time already split into parts ("MM-DD-YYYY", "HH:MM:SS", milliseconds,
    bias in minutes): format_cmtrace and CMTraceFormatter both write through this one function."""
    bias_s = "+000" if bias == 0 else f"{bias:+d}"
    return (
        f'<![LOG[{message}]LOG]!><time="{time}.{ms:03d}{bias_s}" date="{date}" component="{component}" '
        f'context="{context}" type="{type_}" thread="{thread}" file="{file}">'
    )


def render_smstrace(message: str, *, component: str, date: str, time: str, ms: int, bias: int, thread: int = 0) -> str:
    """One SMS-trace record from its time's parts (as render_cmtrace): format_smstrace and SMSTraceFormatter
    both write through this one function."""
    bias_s = "+00" if bias == 0 else f"{bias:+d}"
    return f"{_one_line(message)}  $$<{component}><{date} {time}.{ms:03d}{bias_s}><thread={thread} (0x{thread:04X})>"


def _one_line(message: str) -> str:
    # every line break, a lone CR included, becomes ~~: one record per message, one CRLF at its end
    if "\n" not in message and "\r" not in message:
        return message
    return message.replace("\r\n", "~~").replace("\n", "~~").replace("\r", "~~")


def _parts(when: datetime) -> tuple[str, str, int, int]:
    return f"{when:%m-%d-%Y}", f"{when:%H:%M:%S}", when.microsecond // 1000, _bias(when)


def format_cmtrace(
    message: str, *, component: str, when: datetime, type_: int = 1, thread: int = 0, file: str = "", context: str = ""
) -> str:
    date, time, ms, bias = _parts(when)
    return render_cmtrace(
        message,
        component=component,
        date=date,
        time=time,
        ms=ms,
        bias=bias,
        type_=type_,
        thread=thread,
        file=file,
        context=context,
    )


def format_smstrace(message: str, *, component: str, when: datetime, thread: int = 0) -> str:
    date, time, ms, bias = _parts(when)
    return render_smstrace(message, component=component, date=date, time=time, ms=ms, bias=bias, thread=thread)


class _Stamp:
    """A record's local date, time and bias as the two formats write them. Every service request logs a few
    lines: the date, the time to the second and the bias are worked out once per second, not per line."""

    def __init__(self) -> None:
        self._last: tuple[int, str, str, int] = (-1, "", "", 0)

    def of(self, created: float) -> tuple[str, str, int, int]:
        """("MM-DD-YYYY", "HH:MM:SS", milliseconds, bias in minutes)."""
        micros = round(created * 1_000_000)
        second, ms = divmod(micros, 1_000_000)
        last = self._last
        if last[0] != second:
            when = datetime.fromtimestamp(second).astimezone()
            last = self._last = (second, f"{when:%m-%d-%Y}", f"{when:%H:%M:%S}", _bias(when))
        return last[1], last[2], ms // 1000, last[3]


class _StampedFormatter(logging.Formatter):
    """What both trace formats take from a record; the date and time are worked out once per second."""

    def __init__(self) -> None:
        super().__init__()
        self.stamp = _Stamp()

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        date, time, ms, bias = self.stamp.of(record.created)
        return {
            "component": getattr(record, "component", record.name),
            "date": date,
            "time": time,
            "ms": ms,
            "bias": bias,
            "thread": getattr(record, "tid", 0),
        }


class CMTraceFormatter(_StampedFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return render_cmtrace(
            record.getMessage(),
            **self.fields(record),
            type_=_TYPES.get(record.levelno, 1),
            file=f"{record.filename}:{record.lineno}",
        )


class SMSTraceFormatter(_StampedFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return render_smstrace(record.getMessage(), **self.fields(record))


class _Component(logging.Filter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def filter(self, record: logging.LogRecord) -> bool:
        record.component = self.component
        record.tid = threading.get_native_id()  # the OS thread ID, as Windows logs show it
        return True


class _CRLFFileHandler(logging.FileHandler):
    terminator = "\r\n"


class _Held:
    """The lines one thread logs inside `held_lines`, as rendered when logged: (level, message, line)."""

    __slots__ = ("lines", "thread")

    def __init__(self) -> None:
        self.lines: list[tuple[int, object, str]] = []
        self.thread = threading.get_native_id()  # one thread's lines: its ID asked once (a syscall each time)


class _SMSTraceLogger(logging.Logger):
    """An SMS-trace file logger. Its format takes nothing from a record but the time, the thread and the message
    (it names no source file), so a plain message (no args, exc_info, extra or stack) is written without a
    LogRecord: no caller lookup, no record object, no filter pass; the same line under the handler's lock.
    Services log a few lines per request, and logging's path was most of their cost. Anything else, or a logger
    given another handler or filter, takes logging's own path."""

    def __init__(self, name: str, component: str, handler: logging.FileHandler) -> None:
        super().__init__(name, logging.DEBUG)
        self.component = component
        self.file = handler
        self.addHandler(handler)
        self.addFilter(_Component(component))
        self.propagate = False
        self._holding = threading.local()  # .held: this thread's _Held inside `held`, else None

    @contextmanager
    def held(self) -> Iterator[None]:
        """`held_lines` for this logger: the lines this thread logs in the block, written at its end."""
        if getattr(self._holding, "held", None) is not None:  # inside another block: that one writes them
            yield
            return
        held = self._holding.held = _Held()
        try:
            yield
        finally:
            self._holding.held = None
            self._write(held.lines)

    def _log(
        self,
        level: int,
        msg: object,
        args: Any,
        exc_info: Any = None,
        extra: Any = None,
        stack_info: bool = False,
        stacklevel: int = 1,
    ) -> None:
        handler = self.file
        formatter = handler.formatter
        held: _Held | None = getattr(self._holding, "held", None)
        if (
            args
            or exc_info
            or extra
            or stack_info
            or self.disabled
            or len(self.handlers) != 1
            or len(self.filters) != 1
            or handler.filters
            or level < handler.level
            or type(formatter) is not SMSTraceFormatter
        ):
            if held is not None:  # the lines held so far first: the file keeps the order they were logged in
                self._write(held.lines)
                held.lines = []
            super()._log(level, msg, args, exc_info, extra, stack_info, stacklevel + 1)
            return
        date, clock, ms, bias = formatter.stamp.of(time.time())
        line = render_smstrace(
            str(msg),
            component=self.component,
            date=date,
            time=clock,
            ms=ms,
            bias=bias,
            thread=held.thread if held is not None else threading.get_native_id(),
        )
        if held is not None:
            held.lines.append((level, msg, line))
        else:
            self._write([(level, msg, line)])

    def _write(self, lines: list[tuple[int, object, str]]) -> None:
        """LINES (level, message, rendered line) in one write and flush, under the handler's lock."""
        if not lines:
            return
        handler = self.file
        handler.acquire()
        try:
            stream = handler.stream
            if stream is not None:
                stream.write("".join(line + handler.terminator for _, _, line in lines))
                stream.flush()
        except Exception:
            level, msg, _ = lines[0]
            handler.handleError(self.makeRecord(self.name, level, "(unknown file)", 0, msg, (), None))
            return
        finally:
            handler.release()
        if stream is None:  # closed: logging's path reopens the file as it would
            for level, msg, _ in lines:
                super()._log(level, msg, ())


def held_lines(logger: logging.Logger) -> AbstractContextManager[None]:
    """The lines this thread logs to LOGGER inside the block, written together at its end in one write (one lock,
    one flush: a request's few lines cost one write, not one each), in the order logged, each with the time it was
    logged; also when the block raises (a failing request's lines, its failure's among them, are never lost).
    Another thread's lines meanwhile come before or after them, not between. A line that takes logging's own path
    (args, another handler) writes the lines held before it first. Any logger but an SMS-trace file logger
    (`smstrace_logger`) writes its lines as logged."""
    return logger.held() if isinstance(logger, _SMSTraceLogger) else nullcontext()


_handlers: dict[tuple[Path, str], _CRLFFileHandler] = {}
# The file loggers, kept here rather than in logging's registry: a registered logger is never freed, and
# every setLevel and close walked all of them, so a fleet process (thousands of devices, 8 logs each) paid
# per log file a cost that grew with every device before it.
_loggers: dict[tuple[Path, str, str], logging.Logger] = {}
_lock = threading.Lock()


def _file_logger(path: Path, component: str, formatter: logging.Formatter) -> logging.Logger:
    path = path.absolute()
    kind = type(formatter).__name__
    with _lock:
        known = _loggers.get((path, component, kind))
        if known is not None:
            return known
        handler = _handlers.get((path, kind))
        if handler is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = _CRLFFileHandler(path, encoding="utf-8")
            handler.setFormatter(formatter)
            _handlers[(path, kind)] = handler
        name = f"cmglab.log.{path}.{component}"  # not in logging's registry
        if isinstance(formatter, SMSTraceFormatter):
            logger: logging.Logger = _SMSTraceLogger(name, component, handler)
        else:
            logger = logging.Logger(name, logging.DEBUG)
            logger.addHandler(handler)
            logger.addFilter(_Component(component))
            logger.propagate = False
        _loggers[(path, component, kind)] = logger
        return logger


def cmtrace_logger(path: Path, component: str) -> logging.Logger:
    """A logger writing CMTrace records into `path` (e.g. <device>/Windows/CCM/Logs/CcmMessaging.log)."""
    return _file_logger(path, component, CMTraceFormatter())


def smstrace_logger(path: Path, component: str) -> logging.Logger:
    """A logger writing SMS-trace records into `path` (e.g. <lab>/logs/management-point/CCM_STS.log)."""
    return _file_logger(path, component, SMSTraceFormatter())


def close_file_loggers(prefix: Path | None = None) -> None:
    """Close the log files under `prefix` (all when None): a device or lab that is being removed."""
    under = None if prefix is None else prefix.absolute()
    with _lock:
        for (path, kind), handler in list(_handlers.items()):
            if under is None or path.is_relative_to(under):
                handler.close()
                del _handlers[(path, kind)]
        for key, logger in list(_loggers.items()):
            if under is None or key[0].is_relative_to(under):
                for attached in list(logger.handlers):
                    logger.removeHandler(attached)
                del _loggers[key]


_CMTRACE_ENTRY = re.compile(r'<!\[LOG\[(?P<text>.*?)\]LOG\]!><[^>]*\btype="(?P<type>\d)"', re.DOTALL)


def cmtrace_entries(text: str) -> list[tuple[int, str]]:
    """(type, message) of each CMTrace entry: type 1 information, 2 warning, 3 error."""
    return [(int(m["type"]), m["text"]) for m in _CMTRACE_ENTRY.finditer(text)]


def last_cmtrace_error(path: Path, since: str = "") -> str | None:
    """The last error entry of a CMTrace log, after the last entry containing `since` (a run's start)."""
    try:
        entries = cmtrace_entries(path.read_text(errors="replace"))
    except OSError:
        return None
    if since:
        starts = [i for i, (_, text) in enumerate(entries) if since in text]
        entries = entries[starts[-1] :] if starts else entries
    errors = [text for kind, text in entries if kind == 3]
    return errors[-1] if errors else None
