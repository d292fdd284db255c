"""Ctrl-C and SIGTERM: stop cleanly, exit with the shell's codes (130 for SIGINT, 143 for SIGTERM).

Every ``vlscale`` command already runs inside ``stop_on_signals()`` (the CLI entry point installs it), so a
command needs nothing to be interruptible: the signal raises ``StopRequested`` in the main thread, ``finally``
blocks and context managers run (``vlscale.runtime.files`` removes its temporary files), the CLI prints one line
(``vlscale fit: interrupted by SIGINT``) and exits 130/143.

A loop that must finish something before it stops (the trainer saving a checkpoint) polls instead::

    from vlscale.runtime import signals

    with signals.stop_on_signals(raise_on_signal=False) as stop:
        for step in range(start, total):
            state = train_step(state, next(batches))
            if stop.requested:             # set by the first SIGINT/SIGTERM
                save_checkpoint(state)
                stop.raise_if_requested()  # raises StopRequested; the CLI exits 130 / 143

While a stop is pending, a second signal raises ``StopRequested`` at once (the user insists), even inside the
poll loop; if the process is still running 2 s after it, it is ended with ``hard_exit``. The ``with`` block restores the handlers that were there before, so it nests inside the CLI's.

``StopRequested`` subclasses ``KeyboardInterrupt``: ``except Exception`` does not swallow it, and code that already
handles Ctrl-C handles SIGTERM the same way. ``exc.signum`` and ``exc.exit_code`` say which signal came.

A ``StopRequested`` raised where Python swallows exceptions (a garbage-collection callback, ``__del__``: Python
prints "Exception ignored in ..." and carries on) is not lost: ``sys.unraisablehook`` sees it and the watchdog
delivers the signal again, to the main thread's next bytecode. As a last guard, ``raise_if_pending()`` (called by
``vlscale.runtime.files`` before it moves finished files into place) raises if a stop was requested and never landed.

``deferred()`` holds signals back for a few statements that must not be cut in half (moving a finished set of
output files into place); a signal that came meanwhile is delivered when the block ends.

Why ``hard_exit``: when a signal lands while XLA still runs device work on its own threads, ordinary interpreter
shutdown can crash (a segfault, exit -11). After the CLI has printed its last line it flushes stdout/stderr and
leaves through ``os._exit`` with the exit code (only when run as a program; in-process calls just return it).
Python's signal handlers run between bytecodes of the main thread, so a signal that arrives during one long
compiled call is acted on when that call returns; ``force_after`` bounds that wait.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
import time

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_SIGINT = 128 + signal.SIGINT  # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143
# The CLI's force_after: how long a command may stay busy in one compiled call after a signal before the process
# is ended anyway (with the same exit code). A loop that polls installs its own stop_on_signals (no forcing).
CLI_FORCE_AFTER_S = 10.0
# How often the watchdog raises a swallowed stop again until one lands (see the module text).
REDELIVER_EVERY_S = 0.05

# How many deferred() blocks are open (the watchdog waits for them before forcing an exit).
_critical = 0
_critical_lock = threading.Lock()


def exit_code(signum: int) -> int:
    """The shell's exit status for a process ended by ``signum``: 128 + signum (130 SIGINT, 143 SIGTERM)."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopRequested(KeyboardInterrupt):
    """A SIGINT or SIGTERM asked the process to stop. ``signum``, ``exit_code`` (130 / 143) say which."""

    def __init__(self, signum: int = signal.SIGINT):
        self.signum = int(signum)
        self.exit_code = exit_code(signum)
        super().__init__(f"interrupted by {signal_name(signum)}")


class StopFlag:
    """What ``stop_on_signals`` yields: poll ``requested``; ``raise_if_requested()`` to leave like a signal."""

    def __init__(self, raises: bool = False):
        self.signum: int | None = None
        self.count = 0
        self.raises = raises  # raise mode: the handler raises StopRequested itself
        self.delivered = 0  # raise mode: how many StopRequested the handler raised
        self.swallowed = 0  # how many of those were swallowed (and are to be delivered again)

    @property
    def needs_redelivery(self) -> bool:
        """Every StopRequested the handler raised so far was swallowed (see the module text)."""
        return self.signum is not None and 1 <= self.delivered <= self.swallowed

    @property
    def undelivered(self) -> bool:
        """Raise mode: a signal came but no StopRequested of it is unwinding (all were swallowed)."""
        return self.raises and self.signum is not None and self.delivered <= self.swallowed

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int | None:
        return None if self.signum is None else exit_code(self.signum)

    def raise_if_requested(self) -> None:
        if self.signum is not None:
            raise StopRequested(self.signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken (| head)
            pass


def hard_exit(code: int) -> None:
    """Flushes stdout/stderr and ends the process at once with ``code`` (no interpreter shutdown; see above)."""
    flush_std_streams()
    os._exit(int(code))


@contextlib.contextmanager
def stop_on_signals(raise_on_signal: bool = True, force_after: float | None = None,
                    heard_before: StopFlag | None = None):
    """Turns SIGINT/SIGTERM into ``StopRequested`` (``raise_on_signal=True``) or into a flag to poll.

    Yields a ``StopFlag``. ``force_after``: seconds after the first signal at which the process ends with
    ``hard_exit(exit_code)`` if it is still running (covers a main thread stuck in one long compiled call; open
    ``deferred()`` blocks are waited for). None: never forced by time. Either way a second signal ends the
    process (exit code of the first) if it is still running 2 s later: the user insists. Outside the main
    thread this does nothing but yield a flag that stays unset. ``heard_before``: the flag of an enclosing
    polling block; a signal it heard counts as this block's first (so the next one is the user insisting).
    """
    flag = StopFlag(raises=raise_on_signal)
    if heard_before is not None and heard_before.signum is not None:
        flag.signum, flag.count = heard_before.signum, heard_before.count
    if not _in_main_thread():
        yield flag
        return
    in_hook = [False]
    closing = [False]

    def handler(signum, frame):
        flag.count += 1
        first = flag.signum is None
        if first:
            flag.signum = signum
        if in_hook[0]:  # raised here it would be swallowed once more; the watchdog delivers it after the hook
            return
        if closing[0]:  # the block is being left (its stop, if any, is already under way): count, do not raise
            return
        if raise_on_signal and flag.delivered <= flag.swallowed:  # the first, or every earlier one was swallowed
            flag.delivered += 1
            raise StopRequested(flag.signum)
        if not raise_on_signal and not first:
            flag.delivered += 1
            raise StopRequested(flag.signum)
        # raise mode, later signals: the first one's StopRequested is already unwinding; let cleanup finish.

    watchdog = _Watchdog(flag, force_after)
    previous_hook = sys.unraisablehook

    def unraisable(info):
        if isinstance(info.exc_value, StopRequested) and flag.signum is not None:
            in_hook[0] = True
            try:
                flag.swallowed += 1
                watchdog.redeliver()
            finally:
                in_hook[0] = False
            return
        previous_hook(info)

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handler)
    sys.unraisablehook = unraisable
    _active.append(flag)
    watchdog.start()
    try:
        yield flag
    finally:
        # A signal during this cleanup (a third Ctrl-C while the watchdog is joined) must not raise out of it: that
        # would print a traceback past the command's one-line report.
        closing[0] = True
        watchdog.stop()
        _active.remove(flag)
        sys.unraisablehook = previous_hook
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


# The flags of the stop_on_signals blocks now open in the main thread, innermost last.
_active: list[StopFlag] = []


def raise_if_pending() -> None:
    """Raises ``StopRequested`` if an open raise-mode ``stop_on_signals`` heard a signal whose exception never
    reached the code (swallowed, see the module text). Call it before an act that must not follow a Ctrl-C."""
    for flag in _active:
        if flag.undelivered:
            flag.delivered += 1
            raise StopRequested(flag.signum)


class _Watchdog:
    """Hears signals while the main thread is busy in C code (via signal.set_wakeup_fd) and, if it does not act
    in time, ends the process with the signal's exit code."""

    def __init__(self, flag: StopFlag, force_after: float | None):
        self.flag, self.force_after = flag, force_after
        self._r = self._w = None
        self._old_fd = -1
        self._thread = None
        self._own = 0  # signals the watchdog raised itself (redeliver): not counted as the user's

    # A byte no signal number uses: "deliver the pending signal again" (written by redeliver()).
    _REDELIVER = 255

    def redeliver(self) -> None:
        """Asks the watchdog thread to raise the first signal again in the main thread (its StopRequested was
        swallowed). Without a watchdog nothing happens here; ``raise_if_pending`` still guards outputs."""
        if self._w is None:
            return
        try:
            os.write(self._w, bytes([self._REDELIVER]))
        except OSError:
            pass

    def start(self) -> None:
        try:
            r, w = os.pipe()
            os.set_blocking(w, False)
            self._old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except (OSError, ValueError):  # no pipes, or not allowed here: run without a watchdog
            return
        self._r, self._w = r, w
        self._thread = threading.Thread(target=self._run, name="vlscale-signal-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._w is None:
            return
        signal.set_wakeup_fd(self._old_fd)
        os.close(self._w)  # the reader sees end-of-file and leaves
        self._thread.join(timeout=1.0)
        os.close(self._r)
        self._w = self._r = None

    def _run(self) -> None:
        seen, signum = self.flag.count, self.flag.signum  # a signal heard before the block (heard_before) counts
        first_at = None if signum is None else time.monotonic()
        redelivering = False
        while True:
            deadline = None
            if first_at is not None and self.force_after is not None:
                deadline = first_at + self.force_after
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if redelivering:  # until a StopRequested lands where Python does not swallow it
                timeout = REDELIVER_EVERY_S if timeout is None else min(timeout, REDELIVER_EVERY_S)
            ready = _wait_readable(self._r, timeout)
            if ready:
                try:
                    data = os.read(self._r, 64)
                except OSError:
                    return
                if not data:
                    return  # stop() closed the pipe
                if self._REDELIVER in data:
                    redelivering = True
                wanted = [b for b in data if b in SIGNALS]
                own = min(self._own, len(wanted))
                self._own -= own
                wanted = wanted[own:]
                if wanted:
                    seen += len(wanted)
                    if signum is None:
                        signum, first_at = wanted[0], time.monotonic()
                    if seen >= 2:
                        # Give the main thread a moment: it may be acting on the second signal itself.
                        if not _wait_readable(self._r, 2.0):
                            self._force(signum)
            elif deadline is not None and time.monotonic() >= deadline:
                self._force(signum)
            if redelivering:
                if self.flag.needs_redelivery:
                    self._own += 1  # interrupt_main writes the signal's byte to this pipe too
                    _thread.interrupt_main(self.flag.signum)
                else:
                    redelivering = False

    @staticmethod
    def _force(signum: int) -> None:
        while _critical:
            time.sleep(0.01)
        print(f"vlscale: still busy after {signal_name(signum)}; exiting now", file=sys.stderr)
        hard_exit(exit_code(signum))


def _wait_readable(fd: int, timeout: float | None) -> bool:
    import select

    try:
        r, _, _ = select.select([fd], [], [], timeout)
    except (OSError, ValueError):
        return False
    return bool(r)


@contextlib.contextmanager
def deferred():
    """Holds SIGINT/SIGTERM back until the block ends, then delivers the first one that came (a few statements
    that must not be cut in half, e.g. moving a finished set of files into place). Main thread only; elsewhere
    the block runs unprotected (signals are only ever handled in the main thread anyway)."""
    global _critical
    if not _in_main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum, frame):
        pending.append(signum)

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    with _critical_lock:
        _critical += 1
    for s in SIGNALS:
        signal.signal(s, hold)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        with _critical_lock:
            _critical -= 1
        if pending:
            # Call the restored handler directly: re-raising the signal would reach the watchdog twice.
            handler = previous[pending[0]]
            if callable(handler):
                handler(pending[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(pending[0])
