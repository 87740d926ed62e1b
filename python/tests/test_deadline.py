"""The deadline after a stop: the launcher's file first, the receipt time
plus TJ_DEADLINE_SECONDS when it cannot be read."""

import json
import os
import signal
import time

import pytest

import trainingjob as tj
from conftest import wait_until


def _write_deadline_file(path, signal_at, deadline, name="SIGTERM"):
    # The launcher's format (launcher/src/run.rs, `record_stop`).
    with open(path, "w") as f:
        json.dump(
            {
                "signal": name,
                "signalAtUnixMs": int(signal_at * 1000),
                "graceSeconds": 30,
                "deadlineUnixMs": int(deadline * 1000),
            },
            f,
        )


def _stop():
    os.kill(os.getpid(), signal.SIGTERM)
    assert wait_until(tj.should_stop)


def test_no_deadline_before_a_stop():
    assert tj.deadline() is None and tj.seconds_left() is None
    assert not tj.should_skip_save(estimate_seconds=1e9)


def test_without_a_launcher_the_deadline_is_receipt_plus_the_default():
    before = time.time()
    _stop()
    assert before + 29 <= tj.deadline() <= time.time() + 29
    assert 28 < tj.seconds_left() <= 29


def test_the_launchers_deadline_file_wins(launcher_env):
    now = time.time()
    _write_deadline_file(launcher_env["TJ_DEADLINE_FILE"], now, now + 4.321)
    _stop()
    assert tj.deadline() == pytest.approx(now + 4.321, abs=0.002)
    assert 0 < tj.seconds_left() <= 4.321


def test_an_unreadable_deadline_file_falls_back_to_deadline_seconds(launcher_env, monkeypatch):
    monkeypatch.setenv("TJ_DEADLINE_SECONDS", "7")
    with open(launcher_env["TJ_DEADLINE_FILE"], "w") as f:
        f.write('{"signal":"SIGTERM","signalAtUn')  # torn
    before = time.time()
    _stop()
    assert before + 7 <= tj.deadline() <= time.time() + 7


def test_a_deadline_file_from_before_this_trainer_is_ignored(launcher_env):
    long_ago = tj._stop._state.since - 3600
    _write_deadline_file(launcher_env["TJ_DEADLINE_FILE"], long_ago, long_ago + 29)
    assert not tj.should_stop()
    _stop()
    assert tj.seconds_left() > 28


def test_the_deadline_file_alone_means_stop(launcher_env):
    # Another library replaced our handler: the launcher's file, written
    # before it forwards the signal, still says a stop came.
    now = time.time()
    _write_deadline_file(launcher_env["TJ_DEADLINE_FILE"], now, now + 20, name="SIGHUP")
    assert tj.should_stop()
    assert tj.stop_signal() == "SIGHUP"
    assert tj.deadline() == pytest.approx(now + 20, abs=0.002)


def test_should_skip_save_compares_the_time_left_with_the_save(launcher_env):
    now = time.time()
    _write_deadline_file(launcher_env["TJ_DEADLINE_FILE"], now, now + 5)
    _stop()
    assert tj.should_skip_save(estimate_seconds=10)
    assert not tj.should_skip_save(estimate_seconds=1)
    assert not tj.should_skip_save(), "nothing measured yet: no reason to skip"
