"""TrainingJobCallback: the hooks a Hugging Face Trainer calls."""

import os
import signal
import warnings
from types import SimpleNamespace

import pytest

import trainingjob as tj
from conftest import wait_until


def _control():
    # transformers.TrainerControl's fields that the callback sets.
    return SimpleNamespace(should_save=False, should_training_stop=False)


def _hooks(cb, control, step, args=None):
    state = SimpleNamespace(global_step=step)
    return cb.on_step_end(args or SimpleNamespace(output_dir="out"), state, control)


def test_nothing_changes_while_no_signal_came(launcher_env):
    control = _control()
    assert _hooks(tj.TrainingJobCallback(), control, 5) is control
    assert (control.should_save, control.should_training_stop) == (False, False)


def test_a_stop_makes_the_trainer_save_and_stop(launcher_env):
    cb = tj.TrainingJobCallback()
    os.kill(os.getpid(), signal.SIGTERM)
    assert wait_until(tj.should_stop)
    control = _control()
    _hooks(cb, control, 17)
    assert (control.should_save, control.should_training_stop) == (True, True)
    with open(launcher_env["TJ_PROGRESS_FILE"]) as f:
        assert f.read() == '{"step": 17}'


def test_sigusr1_makes_it_save_and_go_on(launcher_env):
    os.kill(os.getpid(), signal.SIGUSR1)
    assert wait_until(lambda: tj._stop._state.save_pending)
    control = _control()
    _hooks(tj.TrainingJobCallback(), control, 3)
    assert (control.should_save, control.should_training_stop) == (True, False)


def test_every_other_event_is_there_and_does_nothing():
    cb = tj.TrainingJobCallback()
    for event in ("on_init_end", "on_epoch_begin", "on_log", "on_save", "on_some_future_event"):
        assert getattr(cb, event)(None, None, _control()) is None
    with pytest.raises(AttributeError):
        cb.not_a_hook


def test_a_trainer_saving_outside_the_checkpoint_dir_is_warned(launcher_env):
    cb = tj.TrainingJobCallback()
    state = SimpleNamespace(global_step=0)
    with pytest.warns(UserWarning, match="will not resume"):
        cb.on_train_begin(SimpleNamespace(output_dir="/elsewhere"), state, _control())
    args = SimpleNamespace(output_dir=launcher_env["TJ_CHECKPOINT_DIR"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cb.on_train_begin(args, state, _control())


def test_it_is_a_trainer_callback_when_transformers_is_there():
    transformers = pytest.importorskip("transformers")
    cb = tj.TrainingJobCallback()
    assert isinstance(cb, transformers.TrainerCallback)
    assert isinstance(cb, tj.TrainingJobCallback)
