import os
import signal
import subprocess
import sys
import time

import pytest

from trainingjob import _progress, _save, _stop

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# Tests that wait do so on a condition, up to this long; none should need
# more than a fraction of it.
WAIT_SECONDS = 10.0


def wait_until(condition, timeout=WAIT_SECONDS):
    """Polls ``condition`` until it is true or ``timeout`` passes; returns its
    last value. Python runs a signal handler in the main thread between
    bytecodes, so a signal sent to ourselves shows up on the next poll."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > end:
            return value
        time.sleep(0.001)


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch):
    """Every test starts as a trainer without a launcher and without
    requests; a test that wants the launcher sets its variables."""
    for name in list(os.environ):
        if name.startswith("TJ_"):
            monkeypatch.delenv(name)
    _stop._reset()
    _progress._Progress.last_step = None
    _progress._Progress.peer_stop = None
    _save._Timing.last_save_seconds = None
    yield
    _stop._reset()


@pytest.fixture
def launcher_env(tmp_path, monkeypatch):
    """The variables the launcher exports (launcher/src/run.rs, `child_env`),
    pointing into tmp_path. Returns them as a dict."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    values = {
        "TJ_CHECKPOINT_DIR": str(ckpt),
        "TJ_GRACE_SECONDS": "30",
        "TJ_DEADLINE_SECONDS": "29",
        "TJ_DEADLINE_FILE": str(tmp_path / "tj-deadline-1"),
        "TJ_PROGRESS_FILE": str(tmp_path / "tj-progress-1"),
        "TJ_ATTEMPT": "3",
        "TJ_RANK": "0",
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


def run_python(code, env=None, timeout=60):
    """Runs ``code`` in a fresh interpreter that imports this checkout's
    package; returns the CompletedProcess."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TJ_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", code],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_default_sigint,
    )


def _default_sigint():
    # A job started in the background (`nohup ... &`, some CI runners)
    # inherits SIGINT ignored, and Python keeps an ignored SIGINT instead of
    # raising KeyboardInterrupt: give the script what a terminal gives it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)

