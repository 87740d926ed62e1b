"""save(): names and layouts the launcher recognises as complete.

The expectations come from launcher/src/checkpoint.rs through the mirror in
launcher_rules.py: `parse_name` decides what a name means, `check` whether
the checkpoint behind it is complete (one non-empty file; a directory with
`.metadata` for DCP), and `select` which one a restart resumes from."""

import os
import pickle

import pytest

import trainingjob as tj
from trainingjob import _save
from launcher_rules import (
    STEP_DIR,
    STEP_FILE,
    check,
    complete_checkpoints,
    parse_name,
    resume_pick,
    scan,
)


def fake_torch_save(obj, f):
    """Stands in for torch.save: same signature, streams bytes into f."""
    pickle.dump(obj, f)


def test_a_single_file_save_is_a_complete_step_file(launcher_env):
    path = tj.save({"w": [1.0, 2.0]}, 12, save_fn=fake_torch_save)
    root = launcher_env["TJ_CHECKPOINT_DIR"]
    assert path == os.path.join(root, "step-12.ckpt")
    assert parse_name("step-12.ckpt") == ("final", 12, STEP_FILE)
    assert check(path, 12, STEP_FILE) == "complete"
    assert resume_pick(root) == "step-12.ckpt"
    with open(path, "rb") as f:
        assert pickle.load(f) == {"w": [1.0, 2.0]}
    assert tj.last_save_seconds() is not None


def test_without_a_launcher_saves_go_to_a_local_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tj.save(b"state", 1, save_fn=lambda s, f: f.write(s))
    assert path == os.path.join("checkpoints", "step-1.ckpt")
    assert complete_checkpoints(str(tmp_path / "checkpoints")) == ["step-1.ckpt"]


def test_the_newest_save_is_what_the_launcher_resumes(launcher_env):
    root = launcher_env["TJ_CHECKPOINT_DIR"]
    for step in (10, 20, 30):
        tj.save({"step": step}, step, save_fn=fake_torch_save)
    assert complete_checkpoints(root) == ["step-30.ckpt", "step-20.ckpt", "step-10.ckpt"]


def test_a_failed_save_leaves_the_previous_checkpoint_the_one_resumed(launcher_env):
    root = launcher_env["TJ_CHECKPOINT_DIR"]
    tj.save({"step": 10}, 10, save_fn=fake_torch_save)

    def broken(obj, f):
        f.write(b"half a checkpoint")
        raise RuntimeError("CUDA error half-way through the state dict")

    with pytest.raises(RuntimeError):
        tj.save({"step": 20}, 20, save_fn=broken)
    assert resume_pick(root) == "step-10.ckpt"
    assert scan(root)[1] == [], "no temporary left behind"


@pytest.mark.parametrize("bad", [-1, 2**64, 1.5, "3", True])
def test_a_step_the_launcher_could_not_parse_is_refused(launcher_env, bad):
    with pytest.raises((ValueError, TypeError)):
        tj.save({}, bad, save_fn=fake_torch_save)
    assert os.listdir(launcher_env["TJ_CHECKPOINT_DIR"]) == []


class FakeDCP:
    """Stands in for torch.distributed.checkpoint in one process: writes data
    files, then `.metadata` last, as DCP's FileSystemWriter does."""

    def __init__(self, fail_after_data=False, metadata_name=".metadata"):
        self.fail_after_data = fail_after_data
        self.metadata_name = metadata_name
        self.calls = []

    def save(self, state_dict, *, checkpoint_id, process_group=None):
        self.calls.append(checkpoint_id)
        os.makedirs(checkpoint_id, exist_ok=True)
        with open(os.path.join(checkpoint_id, "__0_0.distcp"), "wb") as f:
            pickle.dump(state_dict, f)
        if self.fail_after_data:
            raise RuntimeError("rank 1 failed to write")
        with open(os.path.join(checkpoint_id, self.metadata_name), "wb") as f:
            f.write(b"metadata")


@pytest.fixture
def fake_dcp(monkeypatch):
    def install(**kwargs):
        fake = FakeDCP(**kwargs)
        monkeypatch.setattr(_save, "_import_dcp", lambda: fake)
        return fake

    return install


def test_a_dcp_save_is_staged_then_renamed_to_a_complete_step_dir(launcher_env, fake_dcp):
    fake = fake_dcp()
    root = launcher_env["TJ_CHECKPOINT_DIR"]
    path = tj.save({"w": 1}, 40, dcp=True)
    assert path == os.path.join(root, "step-40")
    # DCP wrote into the temporary name the launcher times saves by.
    assert fake.calls == [os.path.join(root, "step-40.tmp")]
    assert parse_name("step-40") == ("final", 40, STEP_DIR)
    assert check(path, 40, STEP_DIR) == "complete"
    assert resume_pick(root) == "step-40"
    assert sorted(os.listdir(path)) == [".metadata", "__0_0.distcp"]


def test_a_dcp_save_that_fails_leaves_only_a_temporary(launcher_env, fake_dcp):
    fake_dcp(fail_after_data=True)
    root = launcher_env["TJ_CHECKPOINT_DIR"]
    with pytest.raises(RuntimeError):
        tj.save({"w": 1}, 40, dcp=True)
    assert scan(root) == ([], ["step-40.tmp"])
    assert complete_checkpoints(root) == []


def test_a_dcp_save_without_metadata_is_not_given_a_final_name(launcher_env, fake_dcp):
    # DCP without collectives writes __0.metadata, which the launcher does
    # not look for: renaming that into place would make a "broken" checkpoint.
    fake_dcp(metadata_name="__0.metadata")
    with pytest.raises(RuntimeError, match=".metadata"):
        tj.save({"w": 1}, 40, dcp=True)
    assert scan(launcher_env["TJ_CHECKPOINT_DIR"]) == ([], ["step-40.tmp"])


def test_a_dcp_save_of_an_existing_step_replaces_it_whole(launcher_env, fake_dcp):
    fake_dcp()
    root = launcher_env["TJ_CHECKPOINT_DIR"]
    tj.save({"w": "old"}, 40, dcp=True)
    tj.save({"w": "new"}, 40, dcp=True)
    assert os.listdir(root) == ["step-40"]
    with open(os.path.join(root, "step-40", "__0_0.distcp"), "rb") as f:
        assert pickle.load(f) == {"w": "new"}


def test_a_stale_staging_dir_from_an_earlier_try_is_not_mixed_in(launcher_env, fake_dcp):
    fake_dcp()
    root = launcher_env["TJ_CHECKPOINT_DIR"]
    os.makedirs(os.path.join(root, "step-40.tmp"))
    with open(os.path.join(root, "step-40.tmp", "__1_0.distcp"), "wb") as f:
        f.write(b"from a try with two ranks")
    tj.save({"w": 1}, 40, dcp=True)
    assert sorted(os.listdir(os.path.join(root, "step-40"))) == [".metadata", "__0_0.distcp"]


def test_dcp_and_save_fn_do_not_mix(launcher_env):
    with pytest.raises(ValueError):
        tj.save({}, 1, dcp=True, save_fn=fake_torch_save)
