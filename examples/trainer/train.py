#!/usr/bin/env python3
"""Example trainer that follows the checkpoint contract.

Deterministic SGD with momentum on a seeded synthetic linear-regression set,
standard library only. The batch for step s depends only on s, and the
checkpoint holds the weights and the momentum exactly (binary doubles), so a
run that is preempted and resumed any number of times ends with bit-identical
weights and loss to an uninterrupted one: compare the `final` lines.

With TJ_WORLD_SIZE > 1 every rank (TJ_RANK) trains the same model in
lockstep and the ranks agree through files in the shared checkpoint volume
(tjckpt.FileRendezvous): on every step whether to stop (any rank signalled by
step s means all stop after s) and whether to save, and they write one
multi-rank checkpoint together. Every rank computes the whole step rather than
a shard of the gradient: averaging shards would add the same numbers in
another order and change the last bits, and the point of this trainer is that
its final line is bit-identical to an uninterrupted single-rank run.

Settings come from flags or the environment (flag wins):
  --total-steps  TJ_TOTAL_STEPS   (100)   --ckpt-every  TJ_CKPT_EVERY  (10)
  --step-seconds TJ_STEP_SECONDS  (0.0)   --format      TJ_CKPT_FORMAT (dir|file)
  --seed         TJ_SEED          (1234)  --checkpoint-dir TJ_CHECKPOINT_DIR
  --save-seconds TJ_SAVE_SECONDS  (0.0)   every save takes at least this long
  --always-save  TJ_ALWAYS_SAVE   (0)     save on stop even if it cannot fit
  --rendezvous-timeout TJ_RENDEZVOUS_TIMEOUT (600) seconds to wait for peers
  --resume-scan  TJ_RESUME_SCAN   (0)     without the launcher: find the newest
                                          whole checkpoint in the directory
  --stop-exit-code TJ_STOP_EXIT_CODE (0)  exit status after a stop (and its save)
Exit status: 0 done or stopped cleanly, 2 bad settings, 3 the ranks could not
agree (a peer never arrived, or a stopped rank's deadline came first).
Under a batch/v1 Job or a JobSet give --stop-exit-code 143: a trainer that
exits 0 after its stop save tells the Job it is done, and the Job is marked
Complete at whatever step the preemption came.
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
    p.add_argument("--total-steps", type=int, default=int(env("TJ_TOTAL_STEPS") or 100))
    p.add_argument("--ckpt-every", type=int, default=int(env("TJ_CKPT_EVERY") or 10))
    p.add_argument("--step-seconds", type=float, default=float(env("TJ_STEP_SECONDS") or 0))
    p.add_argument("--format", choices=["dir", "file"], default=env("TJ_CKPT_FORMAT") or "dir")
    p.add_argument("--seed", type=int, default=int(env("TJ_SEED") or 1234))
    p.add_argument("--checkpoint-dir", default=env("TJ_CHECKPOINT_DIR") or "checkpoints")
    p.add_argument("--save-seconds", type=float, default=float(env("TJ_SAVE_SECONDS") or 0))
    p.add_argument("--always-save", action="store_true",
                   default=(env("TJ_ALWAYS_SAVE") or "0").strip() in ("1", "true", "yes", "on"))
    p.add_argument("--rendezvous-timeout", type=float,
                   default=float(env("TJ_RENDEZVOUS_TIMEOUT") or 600))
    p.add_argument("--resume-scan", action="store_true",
                   default=(env("TJ_RESUME_SCAN") or "0").strip() in ("1", "true", "yes", "on"))
    p.add_argument("--stop-exit-code", type=int, default=int(env("TJ_STOP_EXIT_CODE") or 0))
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


def slow(data, seconds):
    """The bytes, written first and then held for `seconds` before the save
    can rename its temporary: a stand-in for a large or slow save, so that
    the launcher times it and a grace period shorter than it ends in SIGKILL
    with only the temporary on disk."""
    if seconds <= 0:
        return data

    def write(f):
        f.write(data)
        f.flush()
        time.sleep(seconds)

    return write


def state_files(step, w, v, save_seconds):
    return {"weights.bin": slow(pack(w), save_seconds), "optimizer.bin": pack(v),
            "state.json": json.dumps({"step": step}).encode()}


def save(ck, fmt, step, w, v, save_seconds, rv=None):
    if rv is not None:
        return ck.save_dir_distributed(
            step, state_files(step, w, v, save_seconds),
            gather=lambda entries: rv.gather(f"save {step}", entries),
            barrier=lambda: rv.barrier(f"saved {step}"))
    if fmt == "file":
        body = json.dumps({"step": step, "w": [x.hex() for x in w], "v": [x.hex() for x in v]})
        return ck.save_file(step, slow(body.encode(), save_seconds))
    return ck.save_dir(step, state_files(step, w, v, save_seconds))


def load(path, rank=0):
    """Any layout this trainer writes: one file, one directory, or one
    directory with a rank-R/ part per rank. Every rank holds the same state,
    so a run may resume with another world size (a rank reads its own part,
    or rank 0's)."""
    if path.endswith(".ckpt"):
        d = json.loads(tjckpt.Checkpointer.load_file(path))
        return d["step"], [float.fromhex(x) for x in d["w"]], [float.fromhex(x) for x in d["v"]]
    files = tjckpt.Checkpointer.load_dir(path)
    prefix = next((p for p in (f"rank-{rank:05d}/", "rank-00000/", "")
                   if p + "state.json" in files), "")
    step = json.loads(files[prefix + "state.json"])["step"]
    return step, unpack(files[prefix + "weights.bin"]), unpack(files[prefix + "optimizer.bin"])


def finish(w, xs, ys, step):
    loss = loss_on(w, xs, ys, range(SAMPLES))
    digest = hashlib.sha256(pack(w)).hexdigest()
    print(f"final step {step} loss {loss!r} weights_sha256 {digest}", flush=True)


def fail(code, msg):
    print(msg, flush=True)
    print(f"train.py: {msg}", file=sys.stderr, flush=True)
    return code


def main():
    s = settings()
    ck = tjckpt.Checkpointer(directory=s.checkpoint_dir)
    if s.resume_scan:
        ck.scan_for_resume()
    rv = None
    if ck.world_size > 1:
        if s.format != "dir":
            return fail(2, "several ranks save one multi-rank directory: --format dir")
        attempt = os.environ.get("TJ_ATTEMPT")
        if not attempt:
            return fail(2, "several ranks need TJ_ATTEMPT (the operator sets it), "
                           "a new value on every restart")

        def deadline_passed():
            # A signalled rank waiting for a peer that is gone: leave at the
            # deadline rather than be SIGKILLed after it.
            left = ck.time_left() if ck.stop_requested else None
            return f"{ck.stop_signal} deadline passed" if left is not None and left <= 0 else None

        try:
            rv = tjckpt.FileRendezvous(ck.dir, ck.rank, ck.world_size, attempt,
                                       timeout=s.rendezvous_timeout, abort=deadline_passed)
        except tjckpt.RendezvousError as e:
            return fail(3, f"rendezvous: {e}")
    try:
        return train(s, ck, rv)
    except tjckpt.RendezvousError as e:
        return fail(3, f"rendezvous: rank {ck.rank}: {e}; exiting without saving")


def stopped_during_save(ck, rv, step):
    """A stop signal that arrived while a periodic save ran: this step is
    saved, so stop here rather than train a step the next attempt would redo
    (and then find too little time left to save it). The ranks vote, as on
    every step, so that all of them stop at this step or none does."""
    stop_by = [(ck.rank, ck.stop_signal)] if ck.stop_requested else []
    if rv is not None:
        votes = rv.all_gather(f"after save {step}", ck.stop_signal)
        stop_by = [(r, sig) for r, sig in enumerate(votes) if sig]
    if not stop_by:
        return False
    peer, sig = stop_by[0]
    if ck.stop_requested:
        print(f"stop: {ck.stop_signal} during the save of step {step}", flush=True)
    else:
        print(f"stop: {sig} from rank {peer} during the save of step {step}", flush=True)
        ck.step_done(step, peer_stop={"rank": peer, "signal": sig})
    return True


def train(s, ck, rv):
    xs, ys = dataset(s.seed)
    w, v, start = [0.0] * DIM, [0.0] * DIM, 0
    if ck.resume_path:
        start, w, v = load(ck.resume_path, ck.rank)
        print(f"resumed from step {start} path {ck.resume_path}", flush=True)
    else:
        print("starting from scratch", flush=True)
    if rv is not None:
        # Each rank's launcher resolved the checkpoint on its own; they must
        # have found the same one, or the ranks would train different models.
        starts = rv.all_gather("start", start)
        if len(set(starts)) != 1:
            return fail(3, f"ranks resumed from different steps {starts}; refusing to train")
        rv.remove_older_attempts()
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
        ck.step_done(step)
        usr1 = ck.save_requested()
        stop_by = [(ck.rank, ck.stop_signal)] if ck.stop_requested else []
        if rv is not None:
            # The all_reduce of the flags: a signal that reached any rank by
            # now stops (or saves) every rank after this same step.
            votes = rv.all_gather(f"step {step}", [ck.stop_signal, usr1])
            stop_by = [(r, sig) for r, (sig, _) in enumerate(votes) if sig]
            usr1 = any(u for _, u in votes)
        stop = bool(stop_by)
        if stop:
            if ck.stop_requested:
                print(f"stop: {ck.stop_signal} after step {step}, "
                      f"time_left {ck.time_left():.3f}s (deadline from {ck.deadline_source()})",
                      flush=True)
            else:
                peer, sig = stop_by[0]
                print(f"stop: {sig} from rank {peer} after step {step}", flush=True)
                ck.step_done(step, peer_stop={"rank": peer, "signal": sig})
        if stop or usr1 or step % s.ckpt_every == 0 or step == s.total_steps:
            mine = stop and ck.stop_requested and not s.always_save and ck.should_skip_save()
            skip = mine
            if stop and rv is not None:
                # One rank skipping alone would leave the others waiting for
                # its part of the checkpoint.
                skip = any(rv.all_gather(f"skip {step}", mine))
            if mine:
                print(f"not saving step {step}: last save took {ck.last_save_seconds:.3f}s, "
                      f"only {ck.time_left():.3f}s left", flush=True)
            elif skip:
                print(f"not saving step {step}: another rank has no time left for it", flush=True)
            elif saved_step != step:
                path = save(ck, s.format, step, w, v, s.save_seconds, rv)
                saved_step = step
                why = "SIGUSR1" if usr1 else stop_by[0][1] if stop else "interval"
                print(f"saved step {step} ({why}) to {path} in {ck.last_save_seconds:.4f}s",
                      flush=True)
                if not stop and step < s.total_steps:
                    stop = stopped_during_save(ck, rv, step)
        if stop:
            print(f"exiting after step {step}", flush=True)
            return s.stop_exit_code
    finish(w, xs, ys, s.total_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
