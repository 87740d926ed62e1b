"""Telling the launcher the last step completed, and agreeing across ranks
on when to stop and save.

The launcher reads ``TJ_PROGRESS_FILE`` (JSON ``{"step": N}``, with
``"peerStop": {"rank": R, "signal": S}`` when this rank stops only because
another was signalled) and reports it as ``lastStep`` (launcher/src/run.rs,
`Progress` and `refresh_progress`). It reads at most 4096 bytes.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any, Dict, NamedTuple, Optional, Tuple

from . import _dist, _stop
from ._env import env
from ._save import check_step


class _Progress:
    last_step: Optional[int] = None
    # Sticky, as in the launcher: a later write without it must not make a
    # stop look like a finished run.
    peer_stop: Optional[Dict[str, Any]] = None


def _write(path: str, body: Dict[str, Any]) -> bool:
    # Per process: several trainer processes of one pod share the file.
    part = f"{path}.{os.getpid()}.part"
    try:
        with open(part, "w") as f:
            f.write(json.dumps(body))
        # No fsync: the file lives in /dev/shm and matters only while the pod does.
        os.replace(part, path)
    except OSError:
        return False
    return True


def report_step(step: int, peer_stop: Optional[Dict[str, Any]] = None) -> bool:
    """Records ``step`` as the last one completed, for the launcher's report
    (``lastStep``). ``peer_stop={"rank": R, "signal": "SIGTERM"}`` says this
    rank stops only because rank R was signalled. Replaced by rename, so the
    launcher never reads half of it. False when there is no launcher to tell
    or the file cannot be written: progress is never a reason to stop."""
    _Progress.last_step = check_step(step)
    if peer_stop is not None:
        _Progress.peer_stop = {"rank": int(peer_stop["rank"]), "signal": str(peer_stop["signal"])}
    path = env().progress_file
    if path is None:
        return False
    body: Dict[str, Any] = {"step": _Progress.last_step}
    if _Progress.peer_stop is not None:
        body["peerStop"] = _Progress.peer_stop
    return _write(path, body)


class Decision(NamedTuple):
    """What every rank does at the end of a step; see :func:`step_end`."""

    stop: bool
    save: bool
    #: ``{"rank", "signal"}`` of the rank whose signal stops this one, when
    #: this one was not signalled itself.
    peer_stop: Optional[Dict[str, Any]]


# One int per rank carries who was signalled and by what: the lowest launcher
# rank wins the MIN, and a signal number fits below 256.
_NO_STOP = 2**62
_SIGNALS = 256


def _stop_code() -> int:
    name = _stop.stop_signal()
    if name is None:
        return _NO_STOP
    signum = getattr(signal, name, 0)
    return env().rank * _SIGNALS + int(signum)


def _peer(code: int) -> Dict[str, Any]:
    rank, signum = divmod(code, _SIGNALS)
    return {"rank": rank, "signal": _stop._signal_name(signum) if signum else "unknown"}


def _agree(stop_code: int, save: bool, group: Any) -> Tuple[int, bool]:
    dist = _dist.initialized()
    if dist is None:
        return stop_code, save
    code, no_save = _dist.all_reduce_min(dist, [stop_code, 0 if save else 1], group)
    return code, no_save == 0


def step_end(step: int, process_group: Any = None) -> Decision:
    """Call once at the end of every step, on every rank. Reports ``step``
    and decides, the same way on all ranks, whether to stop (any rank got a
    stop signal) and whether to save now (any rank got SIGUSR1).

    With torch.distributed initialized this is one small all-reduce over
    ``process_group``: ranks that stopped at different steps would deadlock in
    the next collective or save different steps. Without it, it decides for
    this process alone."""
    code, save = _agree(_stop_code(), _stop.save_requested(), process_group)
    stop = code != _NO_STOP
    peer = _peer(code) if stop and not _stop.should_stop() else None
    report_step(step, peer_stop=peer)
    return Decision(stop=stop, save=save, peer_stop=peer)
