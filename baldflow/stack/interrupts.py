"""Ctrl-C, SIGTERM and SIGHUP as one orderly way out of a command, with a deadline.

The first signal becomes an exception in the main thread (KeyboardInterrupt for Ctrl-C, its
subclass Interrupted for the others), so everything that already cleans up after Ctrl-C (Prefect
marks its runs crashed, a round closes its MLflow run, the lock is released) does the same for
a SIGTERM. A second signal, or an orderly way out that takes longer than `grace_seconds`, exits
at once: the servers this process started are killed first, and the one line saying where
things stand is still printed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from baldflow.stack.process import kill_all_now, live_processes

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_active: list[InterruptHandler] = []


class Interrupted(KeyboardInterrupt):
    """A SIGTERM or SIGHUP delivered as an exception (Ctrl-C stays a plain KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(signum: int) -> int:
    """What a shell reports for a process ended by `signum`: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + int(signum)


def signal_of(exc: BaseException) -> int:
    return exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT)


def active() -> InterruptHandler | None:
    """The handler of the command running in this process, if any."""
    return _active[-1] if _active else None


class InterruptHandler:
    """Install with `with InterruptHandler():` around a command (main thread only).

    `describe` says where things stand for the user's one line ("campaign 'x' stopped during
    round 3; ..."); a command sets it once it knows. Handlers stay installed after the block
    when a signal came or this process still runs servers: the way out (Prefect draining its
    logs, the servers stopping at exit) must stay interruptible by a second Ctrl-C, and it
    ends with the process anyway.
    """

    def __init__(self, grace_seconds: float = 6.0, describe: Callable[[], str] | None = None):
        self.grace_seconds = grace_seconds
        self.describe = describe
        self.signum: int | None = None
        # Why this process stopped itself (a server it needs died), when no one signalled it.
        self.failure: str | None = None
        self.reported = False
        self.closing = False
        self._previous: dict[int, object] = {}
        self._deadline_lock = threading.Lock()
        self._deadline_started = False

    def __enter__(self) -> InterruptHandler:
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        _active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self in _active:
            _active.remove(self)
        if self.signum is None and not live_processes():
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)
            self._previous.clear()
        else:
            # The command is over: a signal now only hurries the exit along, silently.
            self.closing = True

    def abort(self, failure: str, grace_seconds: float = 3.0) -> None:
        """From any thread: stop the command as Ctrl-C would, report `failure`, exit 1.

        Meant for a server that died under the command: whatever still talks to it will only
        retry, hence the short deadline.
        """
        if self.signum is not None or self.failure is not None or not self._previous:
            return  # stopping already, or not installed (not the main thread: not ours to end)
        self.failure = failure
        self.grace_seconds = grace_seconds
        # The deadline starts now, from this thread: the main thread may be blocked in a call
        # that only returns much later.
        self._start_deadline()
        # A real signal to the main thread, not _thread.interrupt_main: it also interrupts a
        # blocking system call there. The SIGINT handler then raises KeyboardInterrupt.
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def line(self) -> str:
        """The line that says where things stand (never raises)."""
        text = None
        if self.describe is not None:
            with contextlib.suppress(Exception):
                text = self.describe()
        if not text:
            name = signal.Signals(self.signum or signal.SIGINT).name
            text = "stopped" if self.failure else f"stopped by {name}"
        if self.failure:
            text = f"{self.failure}; {text}"
        return f"baldflow: {text}"

    def status(self) -> int:
        """The exit status: 1 after a failure, else the shell's for the signal received."""
        return 1 if self.failure else exit_status(self.signum or signal.SIGINT)

    def report(self) -> int:
        """Print the line once (stderr) and return the exit status."""
        if not self.reported:
            self.reported = True
            _write_stderr(self.line())
        return self.status()

    def _handle(self, signum: int, frame: object) -> None:
        if self.closing:
            kill_all_now()
            os._exit(self.status() if self.signum is not None else exit_status(signum))
        if self.signum is not None:
            self.force_exit()  # a second signal: the user will not wait
        self.signum = signum
        self._start_deadline()
        quiet_console()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(signum)

    def _start_deadline(self) -> None:
        with self._deadline_lock:
            if self._deadline_started:
                return
            self._deadline_started = True
        threading.Thread(
            target=self._watchdog, name="baldflow-interrupt-deadline", daemon=True
        ).start()

    def _watchdog(self) -> None:
        time.sleep(self.grace_seconds)
        self.force_exit()

    def force_exit(self) -> None:
        """Kill this process's servers, print the line if not done yet, exit at once."""
        kill_all_now()
        status = self.report()
        os._exit(status)


class _Silent(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


_SILENT = _Silent()


def quiet_console() -> None:
    """From now on, log records reach no terminal: the user's one line is the whole report.

    What Prefect logs about the stop ("Crash detected! Execution was aborted by an interrupt
    signal", "Finished in state Crashed") still goes to its API handler, so the Prefect UI
    shows it, and to any file handler; only the handlers that write to a stream (Prefect's
    console handler on the root logger, its `prefect._internal` one, DVC's) are muted.
    """
    loggers = [logging.getLogger()]
    # A copy, taken at once: another thread may create a logger meanwhile.
    loggers += [
        x for x in list(logging.Logger.manager.loggerDict.values()) if isinstance(x, logging.Logger)
    ]
    for logger in loggers:
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                handler.addFilter(_SILENT)


def _write_stderr(text: str) -> None:
    # os.write, not print: this may run in a signal handler that interrupted a print, where the
    # buffered stream's lock is held (a reentrant print raises RuntimeError).
    with contextlib.suppress(OSError):
        os.write(2, (text + "\n").encode("utf-8", "replace"))
