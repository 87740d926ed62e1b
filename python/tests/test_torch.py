"""With real PyTorch (and transformers): skipped where they are not installed."""

import json
import os
import subprocess
import sys

import pytest

from conftest import HERE, WAIT_SECONDS
from launcher_rules import complete_checkpoints, resume_pick, scan

torch = pytest.importorskip("torch")

import trainingjob as tj  # noqa: E402


def test_torch_save_round_trips_through_a_complete_step_file(launcher_env):
    state = {"w": torch.arange(10.0), "step": 3}
    path = tj.save(state, 3)
    assert resume_pick(launcher_env["TJ_CHECKPOINT_DIR"]) == "step-3.ckpt"
    got = torch.load(path, weights_only=True)
    assert torch.equal(got["w"], state["w"]) and got["step"] == 3


def test_dcp_in_one_process_makes_a_complete_step_dir_that_loads(launcher_env):
    import torch.distributed.checkpoint as dcp

    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)}
    path = tj.save(state, 7, dcp=True)
    root = launcher_env["TJ_CHECKPOINT_DIR"]
    assert resume_pick(root) == "step-7"
    assert os.path.isfile(os.path.join(path, ".metadata"))
    assert scan(root)[1] == [], "no temporary left"
    into = {"w": torch.empty(2, 3), "b": torch.ones(3)}
    dcp.load(into, checkpoint_id=path)
    assert torch.equal(into["w"], state["w"]) and torch.equal(into["b"], state["b"])


def _env_for_rank(launcher_env, rank, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TJ_")}
    env.update(launcher_env)
    env.update(
        TJ_RANK=str(rank),
        TJ_WORLD_SIZE="2",
        TJ_PROGRESS_FILE=str(tmp_path / f"progress-{rank}"),
        TJ_DEADLINE_FILE=str(tmp_path / f"deadline-{rank}"),
    )
    return env


def _run_ranks(launcher_env, tmp_path):
    procs = []
    for rank in (0, 1):
        cmd = [sys.executable, os.path.join(HERE, "dist_worker.py"), str(rank), "2",
               str(tmp_path / "store"), str(tmp_path / f"result-{rank}.json")]
        procs.append(subprocess.Popen(cmd, env=_env_for_rank(launcher_env, rank, tmp_path),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=12 * WAIT_SECONDS)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
    return [json.loads((tmp_path / f"result-{r}.json").read_text()) for r in (0, 1)]


def test_two_ranks_agree_to_stop_and_save_one_dcp_checkpoint(launcher_env, tmp_path):
    import torch.distributed.checkpoint as dcp

    r0, r1 = _run_ranks(launcher_env, tmp_path)
    assert r0["decision"] == {"stop": True, "save": False,
                              "peer_stop": {"rank": 1, "signal": "SIGTERM"}}
    assert r1["decision"] == {"stop": True, "save": False, "peer_stop": None}
    progress0 = json.loads((tmp_path / "progress-0").read_text())
    assert progress0 == {"step": 5, "peerStop": {"rank": 1, "signal": "SIGTERM"}}
    root = launcher_env["TJ_CHECKPOINT_DIR"]
    assert r0["path"] == r1["path"] == os.path.join(root, "step-5")
    assert complete_checkpoints(root) == ["step-5"] and scan(root)[1] == []
    into = {"w0": torch.empty(4), "w1": torch.empty(4), "bias": torch.empty(2)}
    dcp.load(into, checkpoint_id=r0["path"])
    assert into["w1"].tolist() == [1.0] * 4 and into["bias"].tolist() == [1.0, 1.0]


def _hf_run(env, max_steps):
    run = subprocess.run([sys.executable, os.path.join(HERE, "hf_trainer_run.py"), str(max_steps)],
                         env=env, capture_output=True, text=True, timeout=30 * WAIT_SECONDS)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_a_hugging_face_trainer_saves_and_stops_on_sigterm_then_resumes(launcher_env):
    pytest.importorskip("transformers")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TJ_")}
    env.update(launcher_env)
    assert "stopped at 3 signal SIGTERM" in _hf_run(env, 50)
    root = launcher_env["TJ_CHECKPOINT_DIR"]
    assert complete_checkpoints(root) == ["checkpoint-3"]
    with open(launcher_env["TJ_PROGRESS_FILE"]) as f:
        assert json.load(f) == {"step": 3}
    # What the next attempt's launcher would export (its `child_env`).
    env.update(TJ_RESUME_PATH=os.path.join(root, "checkpoint-3"), TJ_RESUME_STEP="3")
    assert "stopped at 5 signal None" in _hf_run(env, 5)
    with open(launcher_env["TJ_PROGRESS_FILE"]) as f:
        assert json.load(f) == {"step": 5}
