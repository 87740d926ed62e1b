"""A Hugging Face Trainer callback that stops and saves as the launcher asks.

The Trainer's own ``checkpoint-N/`` directories are a layout the launcher
resumes from (launcher/src/checkpoint.rs, `Naming::HfDir`), so the callback
only has to make the Trainer save and stop at the end of the step in which a
stop signal came::

    args = TrainingArguments(output_dir=trainingjob.checkpoint_dir(), ...)
    trainer = Trainer(model, args, callbacks=[trainingjob.TrainingJobCallback()])
    r = trainingjob.resume()
    trainer.train(resume_from_checkpoint=r.path if r else None)
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Any, Optional

from ._env import env
from ._progress import report_step, step_end


def _ignore(*_args: Any, **_kwargs: Any) -> None:
    return None


def _trainer_callback_base() -> Optional[type]:
    try:
        from transformers import TrainerCallback
    except Exception:  # noqa: BLE001 - absent or broken: duck typing still works
        return None
    return TrainerCallback


@functools.lru_cache(maxsize=None)
def _with_base(cls: type, base: type) -> type:
    return type(cls.__name__, (cls, base), {"__module__": cls.__module__, "__qualname__": cls.__qualname__})


def _same_dir(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


class TrainingJobCallback:
    """Pass it to ``Trainer(callbacks=[...])``. At the end of every step it
    reports the step to the launcher and, on every rank alike (see
    :func:`trainingjob.step_end`), sets ``control.should_save`` and
    ``control.should_training_stop`` once a stop signal came, or only
    ``should_save`` after a SIGUSR1.

    It is a ``transformers.TrainerCallback`` when transformers can be
    imported at the time it is created, and otherwise a plain object with the
    same hooks, every one but its own a no-op."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "TrainingJobCallback":
        base = _trainer_callback_base()
        if base is not None and not issubclass(cls, base):
            cls = _with_base(cls, base)
        return object.__new__(cls)

    def __init__(self, process_group: Any = None) -> None:
        self.process_group = process_group

    def __getattr__(self, name: str) -> Any:
        # The Trainer calls every event on every callback, and new versions
        # add events.
        if name.startswith("on_"):
            return _ignore
        raise AttributeError(name)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        e = env()
        out = getattr(args, "output_dir", None)
        if e.checkpoint_dir and out and not _same_dir(out, e.checkpoint_dir):
            # The launcher looks for checkpoint-N/ only directly inside its
            # directory: saves elsewhere are never resumed.
            warnings.warn(
                f"output_dir {out!r} is not TJ_CHECKPOINT_DIR {e.checkpoint_dir!r}: "
                "the launcher will not resume from these checkpoints",
                stacklevel=2,
            )
        report_step(int(getattr(state, "global_step", 0) or 0))
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        d = step_end(int(getattr(state, "global_step", 0) or 0), self.process_group)
        if d.stop or d.save:
            control.should_save = True
        if d.stop:
            control.should_training_stop = True
        return control
