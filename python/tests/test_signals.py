"""The stop and save handlers: record, never raise, chain politely."""

import os
import select
import signal
import threading

import pytest

import trainingjob as tj
from conftest import HERE, run_python, wait_until


def test_sigterm_to_ourselves_makes_should_stop_true():
    assert not tj.should_stop()
    os.kill(os.getpid(), signal.SIGTERM)
    assert wait_until(tj.should_stop)
    assert tj.stop_signal() == "SIGTERM"
    assert not tj.save_requested(), "a stop is not a save request"


def test_the_first_stop_counts():
    os.kill(os.getpid(), signal.SIGTERM)
    assert wait_until(tj.should_stop)
    first = tj.deadline()
    os.kill(os.getpid(), signal.SIGTERM)
    assert wait_until(lambda: tj.deadline() is not None)
    assert tj.deadline() == first


def test_sigusr1_asks_for_one_save_and_no_stop():
    os.kill(os.getpid(), signal.SIGUSR1)
    assert wait_until(lambda: tj._stop._state.save_pending)
    assert tj.save_requested()
    assert not tj.save_requested(), "one request per signal"
    assert not tj.should_stop()


def test_installing_again_changes_nothing():
    handler = signal.getsignal(signal.SIGTERM)
    assert tj.install_signal_handlers()
    assert tj.install_signal_handlers()
    assert signal.getsignal(signal.SIGTERM) is handler


def test_outside_the_main_thread_installing_is_refused_not_raised():
    got = []
    t = threading.Thread(target=lambda: got.append(tj.install_signal_handlers()))
    t.start()
    t.join(10)
    assert got == [False]


CHAINED = """
import os, signal, sys, time
calls = []
def previous(signum, frame):
    calls.append(signum)
    raise RuntimeError("a handler that raises")
signal.signal(signal.SIGTERM, previous)
import trainingjob as tj, importlib
tj.install_signal_handlers()
importlib.reload(tj)          # installs at import again: must not chain to itself
os.kill(os.getpid(), signal.SIGTERM)
end = time.monotonic() + 10
while not tj.should_stop() and time.monotonic() < end:
    time.sleep(0.001)
print(tj.should_stop(), calls, tj._stop._state.chained_errors)
"""


def test_a_previous_handler_is_called_once_and_its_exception_is_kept_not_raised():
    r = run_python(CHAINED)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (
        "True [15] [\"SIGTERM: RuntimeError('a handler that raises')\"]"
    )


SIGINT_PROBE = """
import os, signal, time
import trainingjob as tj
try:
    os.kill(os.getpid(), signal.SIGINT)
    end = time.monotonic() + 10
    while not tj.should_stop() and time.monotonic() < end:
        time.sleep(0.001)
    print("flag", tj.stop_signal())
except KeyboardInterrupt:
    print("KeyboardInterrupt")
"""


def test_sigint_interrupts_a_script_run_without_the_launcher():
    r = run_python(SIGINT_PROBE)
    assert r.stdout.strip() == "KeyboardInterrupt", r.stderr


def test_sigint_is_a_stop_under_the_launcher_and_raises_nothing(tmp_path):
    r = run_python(SIGINT_PROBE, env={"TJ_DEADLINE_FILE": str(tmp_path / "d")})
    assert r.stdout.strip() == "flag SIGINT", r.stderr


def test_a_forked_child_still_dies_of_sigterm():
    # A DataLoader worker inherits the handler; its parent ends it with
    # SIGTERM, and it must die of it rather than set a flag nobody reads.
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        signal.alarm(10)  # if the handler kept it alive, die of SIGALRM instead
        # Python drops signals that arrive before it finishes forking: say
        # when this one can receive them.
        os.write(ready_w, b"r")
        while True:
            signal.pause()
    os.close(ready_w)
    assert select.select([ready_r], [], [], 10)[0], "the child never got going"
    os.close(ready_r)
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    assert not tj.should_stop()


def test_a_spawned_child_leaves_sigterm_alone():
    import multiprocessing
    import sys

    sys.path.insert(0, HERE)
    try:
        import spawn_probe

        ctx = multiprocessing.get_context("spawn")
        q = ctx.Queue()
        p = ctx.Process(target=spawn_probe.report, args=(q,))
        p.start()
        took_sigterm = q.get(timeout=60)
        p.join(60)
    finally:
        sys.path.remove(HERE)
    assert took_sigterm is False
    assert p.exitcode == 0


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGUSR1"])
def test_the_handler_itself_never_raises(signame):
    tj._stop._on_signal(getattr(signal, signame), None)
    assert tj.should_stop() or tj.save_requested()
