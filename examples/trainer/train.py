#!/usr/bin/env python3
"""Example trainer that follows the checkpoint contract.

Deterministic SGD with momentum on a seeded synthetic linear-regression set,
standard library only. The batch for step s depends only on s, and the
checkpoint holds the weights and the momentum exactly (binary doubles), so a
run that is preempted and resumed any number of times ends with bit-identical
weights and loss to an uninterrupted one: compare the `final` lines.

Settings come from flags or the environment (flag wins):
  --total-steps  TJ_TOTAL_STEPS   (100)   --ckpt-every  TJ_CKPT_EVERY  (10)
  --step-seconds TJ_STEP_SECONDS  (0.0)   --format      TJ_CKPT_FORMAT (dir|file)
  --seed         TJ_SEED          (1234)  --checkpoint-dir TJ_CHECKPOINT_DIR
Run it under the launcher:  launcher run -- python3 train.py
"""

import argparse
import hashlib
import json
import os
import random
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tjckpt  # noqa: E402

DIM, SAMPLES, BATCH, LR, MOMENTUM = 8, 256, 16, 0.02, 0.9


def settings():
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--total-steps", type=int, default=int(env("TJ_TOTAL_STEPS", "100")))
    p.add_argument("--ckpt-every", type=int, default=int(env("TJ_CKPT_EVERY", "10")))
    p.add_argument("--step-seconds", type=float, default=float(env("TJ_STEP_SECONDS", "0")))
    p.add_argument("--format", choices=["dir", "file"], default=env("TJ_CKPT_FORMAT", "dir"))
    p.add_argument("--seed", type=int, default=int(env("TJ_SEED", "1234")))
    p.add_argument("--checkpoint-dir", default=env("TJ_CHECKPOINT_DIR", "checkpoints"))
    return p.parse_args()


def dataset(seed):
    rng = random.Random(seed)
    true_w = [rng.gauss(0, 1) for _ in range(DIM)]
    xs = [[rng.gauss(0, 1) for _ in range(DIM)] for _ in range(SAMPLES)]
    ys = [sum(a * b for a, b in zip(x, true_w)) + rng.gauss(0, 0.1) for x in xs]
    return xs, ys


def loss_on(w, xs, ys, idx):
    return sum((sum(a * b for a, b in zip(xs[i], w)) - ys[i]) ** 2 for i in idx) / len(idx)


def sgd_step(step, w, v, xs, ys):
    idx = [((step - 1) * BATCH + j) % SAMPLES for j in range(BATCH)]
    loss = loss_on(w, xs, ys, idx)
    grad = [0.0] * DIM
    for i in idx:
        err = sum(a * b for a, b in zip(xs[i], w)) - ys[i]
        for k in range(DIM):
            grad[k] += 2.0 * err * xs[i][k] / BATCH
    for k in range(DIM):
        v[k] = MOMENTUM * v[k] + grad[k]
        w[k] -= LR * v[k]
    return loss


def pack(vals):
    return struct.pack(f"<{len(vals)}d", *vals)


def unpack(b):
    return list(struct.unpack(f"<{len(b) // 8}d", b))


def save(ck, fmt, step, w, v):
    if fmt == "file":
        body = json.dumps({"step": step, "w": [x.hex() for x in w], "v": [x.hex() for x in v]})
        return ck.save_file(step, body.encode())
    return ck.save_dir(step, {"weights.bin": pack(w), "optimizer.bin": pack(v),
                              "state.json": json.dumps({"step": step}).encode()})


def load(path):
    if path.endswith(".ckpt"):
        d = json.loads(tjckpt.Checkpointer.load_file(path))
        return d["step"], [float.fromhex(x) for x in d["w"]], [float.fromhex(x) for x in d["v"]]
    files = tjckpt.Checkpointer.load_dir(path)
    step = json.loads(files["state.json"])["step"]
    return step, unpack(files["weights.bin"]), unpack(files["optimizer.bin"])


def finish(w, xs, ys, step):
    loss = loss_on(w, xs, ys, range(SAMPLES))
    digest = hashlib.sha256(pack(w)).hexdigest()
    print(f"final step {step} loss {loss!r} weights_sha256 {digest}", flush=True)


def main():
    s = settings()
    ck = tjckpt.Checkpointer(directory=s.checkpoint_dir)
    xs, ys = dataset(s.seed)
    w, v, start = [0.0] * DIM, [0.0] * DIM, 0
    if ck.resume_path:
        start, w, v = load(ck.resume_path)
        print(f"resumed from step {start} path {ck.resume_path}", flush=True)
    else:
        print("starting from scratch", flush=True)
    saved_step = start
    for step in range(start + 1, s.total_steps + 1):
        t0 = time.monotonic()
        loss = sgd_step(step, w, v, xs, ys)
        # Stands in for the GPU work; the step completes even if a signal
        # arrives meanwhile (the handler only sets a flag).
        rest = s.step_seconds - (time.monotonic() - t0)
        if rest > 0:
            time.sleep(rest)
        print(f"step {step} loss {loss!r}", flush=True)
        usr1 = ck.save_requested()
        if ck.stop_requested or usr1 or step % s.ckpt_every == 0 or step == s.total_steps:
            if ck.stop_requested:
                print(f"stop: {ck.stop_signal} after step {step}, "
                      f"time_left {ck.time_left():.3f}s (deadline from {ck.deadline_source()})", flush=True)
            if ck.stop_requested and ck.should_skip_save():
                print(f"not saving step {step}: last save took {ck.last_save_seconds:.3f}s, "
                      f"only {ck.time_left():.3f}s left", flush=True)
            elif saved_step != step:
                path = save(ck, s.format, step, w, v)
                saved_step = step
                why = "SIGUSR1" if usr1 else ck.stop_signal or "interval"
                print(f"saved step {step} ({why}) to {path} in {ck.last_save_seconds:.4f}s", flush=True)
        if ck.stop_requested:
            print(f"exiting after step {step}", flush=True)
            return 0
    finish(w, xs, ys, s.total_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
