"""Progress for the launcher's report, and the per-step decision."""

import json
import os
import signal

import pytest

import trainingjob as tj
from conftest import wait_until


def _progress(launcher_env):
    with open(launcher_env["TJ_PROGRESS_FILE"]) as f:
        return json.load(f)


def test_report_step_writes_what_the_launcher_reads(launcher_env, tmp_path):
    assert tj.report_step(41)
    assert tj.report_step(42)
    # launcher/src/run.rs, `Progress`: {"step": u64, "peerStop"?: {rank, signal}}.
    assert _progress(launcher_env) == {"step": 42}
    leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".part")]
    assert leftovers == [], "replaced by rename: no partial file stays"


def test_the_file_stays_within_what_the_launcher_reads(launcher_env):
    tj.report_step(2**64 - 1, peer_stop={"rank": 4294967295, "signal": "SIGTERM"})
    assert os.path.getsize(launcher_env["TJ_PROGRESS_FILE"]) <= 4096


def test_without_a_launcher_reporting_is_a_no_op():
    assert tj.report_step(5) is False


def test_an_unwritable_progress_file_never_stops_training(monkeypatch, tmp_path):
    monkeypatch.setenv("TJ_PROGRESS_FILE", str(tmp_path / "missing-dir" / "p"))
    assert tj.report_step(5) is False


def test_a_peer_stop_stays_in_later_reports(launcher_env):
    tj.report_step(7, peer_stop={"rank": 1, "signal": "SIGTERM"})
    tj.report_step(8)
    assert _progress(launcher_env) == {"step": 8, "peerStop": {"rank": 1, "signal": "SIGTERM"}}


def test_step_end_reports_and_carries_on_while_nothing_came(launcher_env):
    d = tj.step_end(3)
    assert d == tj.Decision(stop=False, save=False, peer_stop=None)
    assert _progress(launcher_env) == {"step": 3}


def test_step_end_stops_after_sigterm(launcher_env):
    os.kill(os.getpid(), signal.SIGTERM)
    assert wait_until(tj.should_stop)
    d = tj.step_end(9)
    assert d.stop and d.peer_stop is None
    assert _progress(launcher_env) == {"step": 9}, "a rank's own signal is no peer stop"


def test_step_end_saves_once_after_sigusr1(launcher_env):
    os.kill(os.getpid(), signal.SIGUSR1)
    assert wait_until(lambda: tj._stop._state.save_pending)
    assert tj.step_end(4) == (False, True, None)
    assert tj.step_end(5) == (False, False, None)


@pytest.mark.parametrize("bad", [-3, "7", None])
def test_a_step_that_is_no_step_is_a_bug_said_at_once(bad):
    with pytest.raises((ValueError, TypeError)):
        tj.report_step(bad)
