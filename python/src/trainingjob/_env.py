"""What the launcher tells the trainer through its environment.

Every name here is one the launcher exports (launcher/src/run.rs,
`child_env`) or the operator sets and the launcher passes through
(src/pods.rs, `set_env`). Values are read at each call rather than once at
import: a test, or a wrapper script, may set them after importing.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Optional

#: The launcher's default grace period (launcher/src/cli.rs, `--grace-seconds`).
DEFAULT_GRACE_SECONDS = 30.0
#: What the launcher keeps back from the grace period for its own report
#: (launcher/src/run.rs, `DEADLINE_RESERVE_SECONDS`).
DEADLINE_RESERVE_SECONDS = 1.0
#: Where save() writes when neither its caller nor the launcher names a
#: directory: the same default as examples/trainer/tjckpt.py.
DEFAULT_CHECKPOINT_DIR = "checkpoints"


class Resume(NamedTuple):
    """The checkpoint to resume from and the step it holds."""

    path: str
    step: int


@dataclass(frozen=True)
class LauncherEnv:
    """A snapshot of the launcher's variables; see :func:`env`."""

    checkpoint_dir: Optional[str]
    resume_path: Optional[str]
    resume_step: Optional[int]
    grace_seconds: float
    deadline_seconds: float
    deadline_file: Optional[str]
    progress_file: Optional[str]
    rank: int
    world_size: int
    attempt: Optional[int]
    checkpoint_interval_seconds: Optional[float]

    @property
    def under_launcher(self) -> bool:
        # The launcher always exports its deadline file, whatever flags it
        # was given; nothing else sets the variable.
        return self.deadline_file is not None


def _text(environ: Mapping[str, str], name: str) -> Optional[str]:
    # The launcher treats an empty value as unset (cli.rs, `nonempty`).
    value = environ.get(name)
    return value if value else None


def _whole(environ: Mapping[str, str], name: str) -> Optional[int]:
    # A malformed number is ignored, as the launcher ignores a malformed
    # TJ_ATTEMPT or TJ_RANK: a stray value must not stop a trainer.
    value = _text(environ, name)
    try:
        n = int(value.strip()) if value is not None else None
    except ValueError:
        return None
    return n if n is not None and n >= 0 else None


def _seconds(environ: Mapping[str, str], name: str) -> Optional[float]:
    value = _text(environ, name)
    try:
        s = float(value.strip()) if value is not None else None
    except ValueError:
        return None
    return s if s is not None and math.isfinite(s) and s >= 0 else None


def env(environ: Optional[Mapping[str, str]] = None) -> LauncherEnv:
    """Reads the launcher's variables now. Without a launcher every field has
    a usable default: no checkpoint to resume, rank 0 of 1, 30 s of grace."""
    e = os.environ if environ is None else environ
    grace = _seconds(e, "TJ_GRACE_SECONDS")
    grace = DEFAULT_GRACE_SECONDS if grace is None else grace
    deadline = _seconds(e, "TJ_DEADLINE_SECONDS")
    if deadline is None:
        deadline = max(grace - DEADLINE_RESERVE_SECONDS, 0.0)
    world = _whole(e, "TJ_WORLD_SIZE")
    return LauncherEnv(
        checkpoint_dir=_text(e, "TJ_CHECKPOINT_DIR"),
        resume_path=_text(e, "TJ_RESUME_PATH"),
        resume_step=_whole(e, "TJ_RESUME_STEP"),
        grace_seconds=grace,
        deadline_seconds=deadline,
        deadline_file=_text(e, "TJ_DEADLINE_FILE"),
        progress_file=_text(e, "TJ_PROGRESS_FILE"),
        rank=_whole(e, "TJ_RANK") or 0,
        world_size=world if world else 1,
        attempt=_whole(e, "TJ_ATTEMPT"),
        checkpoint_interval_seconds=_seconds(e, "TJ_CHECKPOINT_INTERVAL_SECONDS"),
    )


def checkpoint_dir(environ: Optional[Mapping[str, str]] = None) -> str:
    """Where checkpoints go: ``TJ_CHECKPOINT_DIR``, else ``./checkpoints``."""
    return env(environ).checkpoint_dir or DEFAULT_CHECKPOINT_DIR


# The launcher takes the step from the trailing digits of the name after a
# `-` or `_` (launcher/src/checkpoint.rs, `parse_name`); `.ckpt` is the one
# suffix it strips first.
_STEP_IN_NAME = re.compile(r"[-_](\d+)(?:\.ckpt)?$")


def _step_from_name(path: str) -> Optional[int]:
    m = _STEP_IN_NAME.search(os.path.basename(os.path.normpath(path)))
    return int(m.group(1)) if m else None


def resume(environ: Optional[Mapping[str, str]] = None) -> Optional[Resume]:
    """The checkpoint to load, or None to start from scratch.

    The launcher sets ``TJ_RESUME_PATH`` only to a checkpoint it found
    complete, and removes any value the pod spec had. Without a launcher a
    path set by hand is honoured, its step taken from ``TJ_RESUME_STEP`` or,
    failing that, from its name as the launcher would."""
    e = env(environ)
    if e.resume_path is None:
        return None
    step = e.resume_step if e.resume_step is not None else _step_from_name(e.resume_path)
    if step is None:
        warnings.warn(
            f"TJ_RESUME_PATH={e.resume_path!r} has no step: set TJ_RESUME_STEP, or name it "
            "step-N, step-N.ckpt or checkpoint-N; starting from scratch",
            stacklevel=2,
        )
        return None
    return Resume(e.resume_path, step)
