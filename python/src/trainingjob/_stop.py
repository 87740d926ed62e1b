"""Stop and save requests, and the deadline that follows a stop.

The handler only records: saving inside a handler can deadlock in the
allocator or save state the interrupted code was half-way through changing
(docs/checkpoint-contract.md, "Signals"). The training loop asks
:func:`should_stop` between steps.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from ._env import env

_SIGUSR1 = getattr(signal, "SIGUSR1", None)
_SIGHUP = getattr(signal, "SIGHUP", None)

#: A deadline file whose signal came this long before the handlers were
#: installed belongs to an earlier trainer (the launcher is PID 1 in every
#: container, so its file name repeats): clocks of one machine agree better.
_STALE_SLACK_SECONDS = 1.0

#: How many errors of chained handlers are kept for a post-mortem.
_KEEP_ERRORS = 8


class _State:
    def __init__(self) -> None:
        # A forked child inherits the handler but is not the trainer.
        self.pid = os.getpid()
        self.since = time.time()
        self.previous: Dict[int, Any] = {}
        self.chained_errors: List[str] = []
        self.clear()

    def clear(self) -> None:
        self.stop_signal: Optional[str] = None
        self.stop_at: Optional[float] = None
        self.launcher_deadline: Optional[float] = None
        # (mtime_ns, size) of a deadline file already judged stale.
        self.stale_deadline_file: Optional[Tuple[int, int]] = None
        self.save_pending = False


_state = _State()


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _record_stop(name: str, at: float) -> None:
    # The first stop counts: its time is the one the grace period runs from.
    if _state.stop_signal is None:
        _state.stop_at = at
        _state.stop_signal = name


def _on_signal(signum: int, frame: Any) -> None:
    if os.getpid() != _state.pid:
        _behave_as_before(signum, frame)
        return
    if signum == _SIGUSR1:
        _state.save_pending = True
    else:
        _record_stop(_signal_name(signum), time.time())
    _chain(signum, frame)


# Marks the handler across reloads of this module, so that installing twice
# never chains the handler to itself.
_on_signal._trainingjob = True  # type: ignore[attr-defined]


def _is_ours(handler: Any) -> bool:
    return bool(getattr(handler, "_trainingjob", False))


def _behave_as_before(signum: int, frame: Any) -> None:
    # A forked child (a DataLoader worker) is stopped by its parent with
    # SIGTERM and must die of it, as it would have without this package.
    prev = _state.previous.get(signum, signal.SIG_DFL)
    if callable(prev):
        prev(signum, frame)
        return
    signal.signal(signum, prev if prev is not None else signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _chain(signum: int, frame: Any) -> None:
    prev = _state.previous.get(signum)
    # default_int_handler raises KeyboardInterrupt mid-step: exactly the torn
    # state the flag exists to avoid. SIG_DFL would end the process.
    if not callable(prev) or prev is signal.default_int_handler or _is_ours(prev):
        return
    try:
        prev(signum, frame)
    except BaseException as e:  # noqa: BLE001 - an exception here lands mid-step
        del _state.chained_errors[: -(_KEEP_ERRORS - 1)]
        _state.chained_errors.append(f"{_signal_name(signum)}: {e!r}")


def _wanted_signals() -> List[int]:
    stops = [signal.SIGTERM]
    # Outside the launcher Ctrl-C must still interrupt a script and a hang-up
    # still end it; under it both are stops the launcher forwards.
    if env().under_launcher:
        stops += [s for s in (signal.SIGINT, _SIGHUP) if s is not None]
    return stops + ([_SIGUSR1] if _SIGUSR1 is not None else [])


def _install(signum: int) -> None:
    current = signal.getsignal(signum)
    if _is_ours(current):
        return
    # Recorded first: a signal arriving just after the swap must find it.
    _state.previous[signum] = current
    signal.signal(signum, _on_signal)


def install_signal_handlers() -> bool:
    """Installs the handlers (SIGTERM and SIGUSR1; SIGINT and SIGHUP too under
    the launcher). Idempotent. Done at import in the main thread of a process
    that is not a multiprocessing child; call it yourself in a forked process
    that trains. False where Python forbids it: outside the main thread."""
    # Checked first: where every handler is ours already, nothing below
    # would notice the wrong thread.
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        for s in _wanted_signals():
            _install(s)
    except ValueError:
        return False
    _state.pid = os.getpid()
    return True


def _install_at_import() -> bool:
    # A spawned DataLoader worker imports the trainer's modules again; its
    # parent stops it with SIGTERM, which must end it.
    mp = sys.modules.get("multiprocessing")
    parent = getattr(mp, "parent_process", None)
    if parent is not None and parent() is not None:
        return False
    return install_signal_handlers()


class _DeadlineFile(NamedTuple):
    signal: str
    signal_at: float
    deadline: float


def _parse_deadline_file(raw: bytes) -> Optional[_DeadlineFile]:
    try:
        d = json.loads(raw)
        return _DeadlineFile(
            str(d["signal"]), d["signalAtUnixMs"] / 1000.0, d["deadlineUnixMs"] / 1000.0
        )
    except (ValueError, TypeError, KeyError):
        return None


def _read_deadline_file() -> Optional[_DeadlineFile]:
    path = env().deadline_file
    if path is None:
        return None
    try:
        st = os.stat(path)
        if (st.st_mtime_ns, st.st_size) == _state.stale_deadline_file:
            return None
        with open(path, "rb") as f:
            d = _parse_deadline_file(f.read(4096))
    except OSError:
        return None
    if d is None or d.signal_at < _state.since - _STALE_SLACK_SECONDS:
        _state.stale_deadline_file = (st.st_mtime_ns, st.st_size)
        return None
    return d


def _check_deadline_file() -> None:
    d = _read_deadline_file()
    if d is not None:
        _state.launcher_deadline = d.deadline
        _record_stop(d.signal, d.signal_at)


def should_stop() -> bool:
    """True once a stop signal (SIGTERM; SIGINT, SIGHUP under the launcher)
    arrived. Also true once the launcher's deadline file says it forwarded
    one: the launcher writes it before forwarding, so a stop is seen even
    where another library replaced this package's handler."""
    if _state.stop_signal is None:
        _check_deadline_file()
    return _state.stop_signal is not None


def stop_signal() -> Optional[str]:
    """The name of the stop signal (``"SIGTERM"``), or None."""
    should_stop()
    return _state.stop_signal


def save_requested() -> bool:
    """True once per SIGUSR1: save at the end of this step, keep training."""
    pending, _state.save_pending = _state.save_pending, False
    return pending


def deadline() -> Optional[float]:
    """When the process should have exited after a stop, as a Unix time
    (seconds), or None while no stop was requested. The launcher's deadline
    file when it can be read, else the receipt time plus
    ``TJ_DEADLINE_SECONDS``."""
    if not should_stop():
        return None
    if _state.launcher_deadline is None:
        _check_deadline_file()
    if _state.launcher_deadline is not None:
        return _state.launcher_deadline
    assert _state.stop_at is not None
    return _state.stop_at + env().deadline_seconds


def seconds_left() -> Optional[float]:
    """Seconds until :func:`deadline` (negative once it passed), or None."""
    d = deadline()
    return None if d is None else d - time.time()


def _reset() -> None:
    """Forgets every request: for tests, which share one process."""
    _state.clear()
