"""Reading the launcher's environment, with and without a launcher."""

import pytest

import trainingjob as tj


def test_without_a_launcher_everything_has_a_usable_default():
    e = tj.env()
    assert e.checkpoint_dir is None and e.resume_path is None
    assert (e.rank, e.world_size, e.attempt) == (0, 1, None)
    assert (e.grace_seconds, e.deadline_seconds) == (30.0, 29.0)
    assert e.deadline_file is None and e.progress_file is None
    assert not e.under_launcher
    assert tj.checkpoint_dir() == "checkpoints"
    assert tj.resume() is None


def test_reads_the_launchers_variables(launcher_env, monkeypatch):
    monkeypatch.setenv("TJ_WORLD_SIZE", "4")
    monkeypatch.setenv("TJ_RANK", "2")
    monkeypatch.setenv("TJ_CHECKPOINT_INTERVAL_SECONDS", "600")
    e = tj.env()
    assert e.under_launcher
    assert e.checkpoint_dir == launcher_env["TJ_CHECKPOINT_DIR"] == tj.checkpoint_dir()
    assert (e.rank, e.world_size, e.attempt) == (2, 4, 3)
    assert e.deadline_file == launcher_env["TJ_DEADLINE_FILE"]
    assert e.progress_file == launcher_env["TJ_PROGRESS_FILE"]
    assert e.checkpoint_interval_seconds == 600.0


def test_deadline_seconds_default_to_grace_less_the_launchers_reserve(monkeypatch):
    monkeypatch.setenv("TJ_GRACE_SECONDS", "12.5")
    assert tj.env().deadline_seconds == 11.5
    monkeypatch.setenv("TJ_GRACE_SECONDS", "0.5")
    assert tj.env().deadline_seconds == 0.0


@pytest.mark.parametrize("value", ["", "x", "-1", "1.5", " "])
def test_malformed_numbers_are_ignored_as_the_launcher_ignores_them(monkeypatch, value):
    for name in ("TJ_RANK", "TJ_WORLD_SIZE", "TJ_ATTEMPT"):
        monkeypatch.setenv(name, value)
    e = tj.env()
    assert (e.rank, e.world_size, e.attempt) == (0, 1, None)


@pytest.mark.parametrize("value", ["", "soon", "-1", "nan", "inf"])
def test_malformed_seconds_fall_back_to_the_default(monkeypatch, value):
    monkeypatch.setenv("TJ_GRACE_SECONDS", value)
    assert tj.env().grace_seconds == 30.0


def test_resume_is_what_the_launcher_exported(launcher_env, monkeypatch):
    path = launcher_env["TJ_CHECKPOINT_DIR"] + "/step-1200"
    monkeypatch.setenv("TJ_RESUME_PATH", path)
    monkeypatch.setenv("TJ_RESUME_STEP", "1200")
    assert tj.resume() == tj.Resume(path, 1200)
    assert tj.resume().step == 1200


@pytest.mark.parametrize(
    "name, step",
    [("step-40.ckpt", 40), ("step-40", 40), ("checkpoint-40", 40), ("global_step_40", 40)],
)
def test_a_path_set_by_hand_takes_its_step_from_its_name(monkeypatch, name, step):
    monkeypatch.setenv("TJ_RESUME_PATH", "/ck/" + name)
    assert tj.resume() == ("/ck/" + name, step)


def test_a_path_without_a_step_is_not_resumed_and_says_why(monkeypatch):
    monkeypatch.setenv("TJ_RESUME_PATH", "/ck/latest")
    with pytest.warns(UserWarning, match="TJ_RESUME_STEP"):
        assert tj.resume() is None
