"""trainingjob: the trainer's side of the trainingjob-operator checkpoint contract.

Importing it installs the stop handlers (SIGTERM, and SIGINT and SIGHUP
under the launcher; SIGUSR1 asks for a save). Everything else is read from
the launcher's environment when called, and works without a launcher::

    import trainingjob as tj

    r = tj.resume()                          # None: start from scratch
    state = load(r.path) if r else fresh()
    for step in range(r.step + 1 if r else 1, total + 1):
        train_one_step(state, step)
        d = tj.step_end(step)                # report progress; agree on stop/save
        if d.stop or d.save or step % every == 0:
            if not (d.stop and tj.should_skip_save()):
                tj.save(state, step)         # step-N.ckpt, atomically
        if d.stop:
            sys.exit(0)

See docs/checkpoint-contract.md, section "The Python package".
"""

from ._atomic import atomic_write
from ._env import LauncherEnv, Resume, checkpoint_dir, env, resume
from ._progress import Decision, report_step, step_end
from ._save import last_save_seconds, save, should_skip_save
from ._stop import (
    deadline,
    install_signal_handlers,
    save_requested,
    seconds_left,
    should_stop,
    stop_signal,
)
from . import _stop
from .hf import TrainingJobCallback

__version__ = "0.1.0"

__all__ = [
    "Decision",
    "LauncherEnv",
    "Resume",
    "TrainingJobCallback",
    "atomic_write",
    "checkpoint_dir",
    "deadline",
    "env",
    "install_signal_handlers",
    "last_save_seconds",
    "report_step",
    "resume",
    "save",
    "save_requested",
    "seconds_left",
    "should_skip_save",
    "should_stop",
    "step_end",
    "stop_signal",
]

_stop._install_at_import()
