"""Under the real launcher binary, when one has been built
(target/debug/launcher or target/release/launcher): the names the package
reads, the deadline file, the progress file and the save layout all as the
launcher writes and reads them."""

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading

import pytest

from conftest import HERE, REPO, WAIT_SECONDS


def _launcher():
    built = [os.path.join(REPO, "target", kind, "launcher") for kind in ("debug", "release")]
    built = [p for p in built if os.access(p, os.X_OK)]
    return max(built, key=os.path.getmtime) if built else None


LAUNCHER = _launcher()
pytestmark = pytest.mark.skipif(LAUNCHER is None, reason="the launcher is not built")


class Run:
    """One launcher run of launcher_trainer.py, its output read as it comes."""

    def __init__(self, tmp_path, attempt):
        (tmp_path / "shm").mkdir(exist_ok=True)
        self.report = tmp_path / f"report-{attempt}.json"
        cmd = [LAUNCHER, "run", "--checkpoint-dir", str(tmp_path / "ck"),
               "--report", str(self.report), "--grace-seconds", "10",
               "--attempt", str(attempt), "--rank", "0", "--shm-dir", str(tmp_path / "shm"),
               "--", sys.executable, os.path.join(HERE, "launcher_trainer.py")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TJ_")}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern):
        """The first line matching ``pattern``; fails after WAIT_SECONDS."""
        while True:
            try:
                line = self.lines.get(timeout=WAIT_SECONDS)
            except queue.Empty:
                pytest.fail(f"no line like {pattern!r}; got:\n" + "\n".join(self.seen))
            self.seen.append(line)
            m = re.search(pattern, line)
            if m:
                return m

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=3 * WAIT_SECONDS) == 0, "\n".join(self.seen)
        with open(self.report) as f:
            return json.load(f)


def test_a_preempted_run_saves_its_last_step_and_the_next_resumes_it(tmp_path):
    first = Run(tmp_path, attempt=1)
    assert first.wait_for(r"^resume (\S+)").group(1) == "None"
    first.wait_for(r"^saved .*step-10\.ckpt$")
    report = first.stop()
    stopped = first.wait_for(r"^stopped (\d+) SIGTERM ([\d.]+)")
    step, left = int(stopped.group(1)), float(stopped.group(2))
    assert 0 < left <= 9, "the deadline from the launcher's file: grace less one second"
    assert report["state"] == "signalled" and report["signalHonoured"] is True
    # The progress file and the final save, as the launcher read them.
    assert report["lastStep"] == step
    assert report["lastCheckpoint"]["step"] == step
    assert report["lastCheckpoint"]["path"].endswith(f"step-{step}.ckpt")
    # Every save was timed: the launcher saw each temporary become its final name.
    assert report["saves"]["count"] >= 2 and report["saves"]["lastSeconds"] > 0

    second = Run(tmp_path, attempt=2)
    resumed = second.wait_for(r"^resume (\S+) (\d+)")
    assert resumed.groups() == (report["lastCheckpoint"]["path"], str(step))
    second.stop()
