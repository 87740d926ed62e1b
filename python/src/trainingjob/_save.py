"""Checkpoints written in the layouts the launcher counts as complete
(launcher/src/checkpoint.rs, `parse_name` and `check`):

* ``torch.save``: the file ``step-N.ckpt``, complete by virtue of its name
  and not being empty; written as ``step-N.ckpt.tmp`` and renamed.
* DCP: the directory ``step-N/`` holding ``.metadata``, which DCP writes
  after every rank's data; staged as ``step-N.tmp/`` and renamed, so the
  final name never shows a save in progress.

Those temporary names are the ones the launcher times saves by
(launcher/src/saves.rs): ``<final name>.tmp`` exactly.
"""

from __future__ import annotations

import operator
import os
import shutil
import time
from typing import IO, Any, Callable, Optional

from . import _dist, _stop
from ._atomic import TMP_SUFFIX, atomic_write, fsync_dir
from ._env import checkpoint_dir

FILE_SUFFIX = ".ckpt"
DCP_METADATA = ".metadata"
# Still a `.tmp`, so a crash between the two renames of a replacement leaves
# something the launcher deletes, never a second checkpoint of one step.
_REPLACED_SUFFIX = ".replaced" + TMP_SUFFIX
# The launcher parses steps as u64 (checkpoint.rs, `parse_step`): a larger one
# would make a name it ignores.
_MAX_STEP = 2**64 - 1

SaveFn = Callable[[Any, IO[bytes]], Any]


class _Timing:
    last_save_seconds: Optional[float] = None


def file_name(step: int) -> str:
    return f"step-{step}{FILE_SUFFIX}"


def dir_name(step: int) -> str:
    return f"step-{step}"


def check_step(step: Any) -> int:
    """The step as an int; numpy and torch integers are accepted."""
    if isinstance(step, bool):
        raise TypeError("step must be an integer, not a bool")
    n = operator.index(step)
    if not 0 <= n <= _MAX_STEP:
        raise ValueError(f"step must be between 0 and {_MAX_STEP}, not {n}")
    return n


def _torch_save(obj: Any, f: IO[bytes]) -> None:
    import torch

    torch.save(obj, f)


def _save_file(state: Any, final: str, save_fn: Optional[SaveFn]) -> str:
    write = save_fn or _torch_save
    os.makedirs(os.path.dirname(final) or ".", exist_ok=True)
    atomic_write(final, lambda f: write(state, f))
    return final


def _import_dcp() -> Any:
    try:
        import torch.distributed.checkpoint as dcp
    except ImportError as e:
        raise ImportError(
            "save(..., dcp=True) needs PyTorch: pip install 'trainingjob[torch]'"
        ) from e
    if not hasattr(dcp, "save"):
        raise ImportError("save(..., dcp=True) needs PyTorch >= 2.2 (torch.distributed.checkpoint.save)")
    return dcp


def _fresh_dir(path: str) -> None:
    # Only our own earlier, failed try at this step can have left it: the
    # launcher deletes temporaries before the trainer starts.
    if os.path.lexists(path):
        shutil.rmtree(path)
    os.makedirs(path)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _move_aside(final: str) -> Optional[str]:
    # rename(2) will not replace a non-empty directory.
    if not os.path.lexists(final):
        return None
    aside = final + _REPLACED_SUFFIX
    if os.path.lexists(aside):
        _remove(aside)
    os.rename(final, aside)
    return aside


def _commit_dir(staging: str, final: str) -> None:
    if not os.path.isfile(os.path.join(staging, DCP_METADATA)):
        raise RuntimeError(
            f"{staging} has no {DCP_METADATA} after the save: the launcher would "
            "not count it complete, so it keeps its temporary name"
        )
    fsync_dir(staging)
    aside = _move_aside(final)
    os.rename(staging, final)
    fsync_dir(os.path.dirname(final))
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _commit_everywhere(dist: Any, group: Any, staging: str, final: str) -> None:
    """Rank 0 renames; every rank learns whether it worked, so none trains on
    believing in a checkpoint that is not there."""
    if dist is None:
        _commit_dir(staging, final)
        return
    error: Optional[BaseException] = None
    if _dist.rank(dist, group) == 0:
        try:
            _commit_dir(staging, final)
        except Exception as e:  # noqa: BLE001 - re-raised once every rank knows
            error = e
    [ok] = _dist.all_reduce_min(dist, [0 if error else 1], group)
    if error is not None:
        raise error
    if not ok:
        raise RuntimeError(f"rank 0 could not complete {final}: see its log")


def _save_dcp(state: Any, final: str, group: Any) -> str:
    dcp = _import_dcp()
    dist = _dist.initialized()
    staging = final + TMP_SUFFIX
    if _dist.rank(dist, group) == 0:
        _fresh_dir(staging)
    # No rank may write into the staging directory before it is fresh.
    _dist.barrier(dist, group)
    dcp.save(state, checkpoint_id=staging, process_group=group)
    _commit_everywhere(dist, group, staging, final)
    return final


def save(
    state: Any,
    step: int,
    *,
    dcp: bool = False,
    directory: Optional[str] = None,
    save_fn: Optional[SaveFn] = None,
    process_group: Any = None,
) -> str:
    """Saves ``state`` as the checkpoint of ``step`` (optimizer steps
    completed) and returns its path. Atomic: the final name appears only
    once the save is whole and durable.

    * Default: ``torch.save(state, f)`` into ``<dir>/step-N.ckpt``. Call it
      on one process (rank 0); a second process saving the same step at the
      same time gets ``FileExistsError``, never a mixed file. ``save_fn(state,
      f)`` replaces ``torch.save`` (``pickle.dump``, ``safetensors``...).
    * ``dcp=True``: ``torch.distributed.checkpoint.save`` into
      ``<dir>/step-N/``; a collective: call it on every rank of
      ``process_group`` (the default group when None).

    ``directory`` defaults to ``TJ_CHECKPOINT_DIR``, else ``./checkpoints``.
    A checkpoint of the same step is replaced."""
    step = check_step(step)
    if dcp and save_fn is not None:
        raise ValueError("save_fn is for single-file saves; DCP writes its own files")
    root = directory or checkpoint_dir()
    t0 = time.monotonic()
    if dcp:
        path = _save_dcp(state, os.path.join(root, dir_name(step)), process_group)
    else:
        path = _save_file(state, os.path.join(root, file_name(step)), save_fn)
    _Timing.last_save_seconds = time.monotonic() - t0
    return path


def last_save_seconds() -> Optional[float]:
    """How long this process's last successful :func:`save` took."""
    return _Timing.last_save_seconds


def should_skip_save(estimate_seconds: Optional[float] = None, margin: float = 1.25) -> bool:
    """After a stop: True when a save of ``estimate_seconds`` (default: as
    long as the last one) times ``margin`` would not end before the deadline.
    Skipping one lets the trainer exit cleanly; starting it anyway is safe
    (a save cut off leaves only a temporary), only wasted."""
    left = _stop.seconds_left()
    est = estimate_seconds if estimate_seconds is not None else _Timing.last_save_seconds
    return left is not None and est is not None and left < est * margin
