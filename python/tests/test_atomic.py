"""atomic_write: the final name holds all of a file or nothing new."""

import os
import pickle

import pytest

import trainingjob as tj
from conftest import run_python
from launcher_rules import complete_checkpoints, scan


def _write(data):
    return lambda f: f.write(data)


def test_writes_the_whole_file_and_leaves_no_temporary(tmp_path):
    final = str(tmp_path / "step-3.ckpt")
    assert tj.atomic_write(final, _write(b"abc" * 1000)) == 3000
    with open(final, "rb") as f:
        assert f.read() == b"abc" * 1000
    assert os.listdir(tmp_path) == ["step-3.ckpt"]


class Interrupted(Exception):
    pass


def _half_then(exc):
    def write(f):
        f.write(b"x" * 4096)
        f.flush()
        raise exc

    return write


@pytest.mark.parametrize("exc", [Interrupted("disk full"), KeyboardInterrupt()])
def test_a_save_interrupted_half_way_leaves_nothing_complete_looking(tmp_path, exc):
    final = str(tmp_path / "step-3.ckpt")
    with pytest.raises(type(exc)):
        tj.atomic_write(final, _half_then(exc))
    assert os.listdir(tmp_path) == [], "the temporary is removed too"
    assert complete_checkpoints(str(tmp_path)) == []


def test_an_interrupted_rewrite_keeps_the_old_checkpoint_whole(tmp_path):
    final = str(tmp_path / "step-3.ckpt")
    tj.atomic_write(final, _write(b"old"))
    with pytest.raises(Interrupted):
        tj.atomic_write(final, _half_then(Interrupted()))
    with open(final, "rb") as f:
        assert f.read() == b"old"
    assert complete_checkpoints(str(tmp_path)) == ["step-3.ckpt"]


def test_an_empty_write_is_refused_because_the_launcher_would_skip_it(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        tj.atomic_write(str(tmp_path / "step-3.ckpt"), lambda f: None)
    assert os.listdir(tmp_path) == []


KILLED_MID_SAVE = """
import os, signal, trainingjob as tj
def write(f):
    f.write(b"x" * 65536)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)   # no except, no finally: a real kill
tj.atomic_write({final!r}, write)
"""


def test_a_save_killed_half_way_leaves_only_a_temporary_the_launcher_deletes(tmp_path):
    final = str(tmp_path / "step-8.ckpt")
    r = run_python(KILLED_MID_SAVE.format(final=final))
    assert r.returncode == -9, r.stderr
    candidates, temporaries = scan(str(tmp_path))
    assert (candidates, temporaries) == ([], ["step-8.ckpt.tmp"])
    # Nobody holds the dead writer's lock: the next save of the step reuses it.
    tj.atomic_write(final, _write(b"done"))
    assert complete_checkpoints(str(tmp_path)) == ["step-8.ckpt"]
    assert os.listdir(tmp_path) == ["step-8.ckpt"]


def test_a_second_live_writer_of_the_same_file_is_refused(tmp_path):
    final = str(tmp_path / "step-5.ckpt")
    refused = []

    def outer(f):
        f.write(b"first writer's bytes")
        with pytest.raises(FileExistsError) as e:
            tj.atomic_write(final, _write(b"second writer's bytes"))
        refused.append(e.value)

    tj.atomic_write(final, outer)
    assert refused, "the second writer got in"
    with open(final, "rb") as f:
        assert f.read() == b"first writer's bytes"


def test_a_writer_like_torch_save_streams_into_the_file(tmp_path):
    # torch.save(obj, f) calls f.write many times; pickle.dump is the same shape.
    state = {"w": list(range(1000)), "step": 3}
    final = str(tmp_path / "step-3.ckpt")
    tj.atomic_write(final, lambda f: pickle.dump(state, f))
    with open(final, "rb") as f:
        assert pickle.load(f) == state
