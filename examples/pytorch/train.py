#!/usr/bin/env python3
"""A small but real PyTorch job that survives preemption under the
trainingjob operator, through the `trainingjob` package (python/).

A CNN of 3.2 M parameters classifies synthetic 3x128x128 images made from a
seed: sample i depends only on (seed, i), and the indices of step s only on
(seed, s, rank), so a resumed run sees exactly the batches an uninterrupted
one would. DataLoader workers (2, persistent) make the batches and pass them
to the trainer through /dev/shm. Ranks train with DistributedDataParallel
(gloo on CPU, NCCL on CUDA); RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
come from the operator (29500), or torchrun.

Checkpoints: PyTorch DCP (`--save dcp`, every rank writes its part of
step-N/) or one `torch.save` file by rank 0 (`--save torch`, step-N.ckpt),
both atomic through trainingjob.save, holding the model, the optimizer and
the LR schedule. The data position is the step itself. On SIGTERM to any
rank every rank finishes the same step (trainingjob.step_end's all-reduce),
saves it and exits 0.

Rank 0 ends with `final step T eval_loss L state_sha256 H`: the sha256 of
the final model state_dict, identical with or without preemptions (CPU
runs with --threads 1, the default; CUDA runs with deterministic kernels).
Each rank also prints `shm: peak ...`, the most of /dev/shm it saw in use
(sampled by statvfs, so unlinked DataLoader segments count too), to size
the TrainingJob's spec.sharedMemory.

  torchrun --nproc-per-node 2 train.py --steps 60     # locally
  launcher run --checkpoint-dir /tmp/ck -- python3 train.py   # as the operator runs it
"""

import argparse
import ctypes
import hashlib
import math
import os
import socket
import sys
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, Sampler

import trainingjob as tj  # installs the SIGTERM/SIGUSR1 handlers

CLASSES, CHANNELS = 10, 3
SAMPLES, EVAL_SAMPLES = 8192, 256


def settings():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="optimizer steps in all")
    p.add_argument("--ckpt-every", type=int, default=50, help="periodic checkpoint interval (steps)")
    p.add_argument("--save", choices=["dcp", "torch"], default="dcp", help="checkpoint format")
    p.add_argument("--batch-size", type=int, default=96, help="per rank")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--prefetch-factor", type=int, default=2)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op CPU threads; more changes the last bits of the sums")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--timeout", type=float, default=120, help="seconds a collective may wait for a peer")
    p.add_argument("--save-seconds", type=float, default=0,
                   help="test hook: every save holds this long after writing its data and "
                        "before it completes, as a large save would")
    return p.parse_args()


class SyntheticImages(Dataset):
    """Class templates plus noise, both drawn from the seed; item i from (seed, i) alone."""

    def __init__(self, seed, size):
        self.seed, self.size = seed, size
        g = torch.Generator().manual_seed(seed)
        # Smooth templates (8x8 upsampled), so the classes are learnable.
        low = torch.randn(CLASSES, CHANNELS, 8, 8, generator=g)
        self.templates = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)

    def __len__(self):
        return SAMPLES + EVAL_SAMPLES

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        label = int(torch.randint(CLASSES, (1,), generator=g))
        x = self.templates[label] + 4.0 * torch.randn(CHANNELS, self.size, self.size, generator=g)
        return x, label


class StepBatches(Sampler):
    """The index batch of each step from `first` on, for one rank: an epoch-wise
    shuffle drawn from (seed, epoch), so step s always gets the same samples."""

    def __init__(self, seed, first, last, rank, world, batch):
        self.seed, self.first, self.last = seed, first, last
        self.rank, self.world, self.batch = rank, world, batch
        self._perms = {}

    def _perm(self, epoch):
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed + 7919 * (epoch + 1))
            self._perms = {epoch: torch.randperm(SAMPLES, generator=g).tolist()}
        return self._perms[epoch]

    def __len__(self):
        return max(0, self.last - self.first + 1)

    def __iter__(self):
        per_step = self.batch * self.world
        for step in range(self.first, self.last + 1):
            start = (step - 1) * per_step + self.rank * self.batch
            yield [self._perm(k // SAMPLES)[k % SAMPLES] for k in range(start, start + self.batch)]


class Net(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, 16, kernel_size=5, stride=4, padding=2)
        side = (size + 4 - 5) // 4 + 1
        self.fc1 = nn.Linear(16 * side * side, 192)
        self.fc2 = nn.Linear(192, CLASSES)

    def forward(self, x):
        x = F.relu(self.conv(x))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def lr_factor(step, total):
    """Warm-up then cosine decay: the scheduler's state is part of the checkpoint."""
    warm = max(1, total // 20)
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


class ShmPeak:
    """The most of /dev/shm in use above what it held at the start, sampled
    every 2 ms. statvfs counts the segments DataLoader workers unlink right
    after creating them, which a directory listing never shows. In a pod the
    /dev/shm is the pod's own; on a shared host it counts every process's."""

    def __init__(self, path="/dev/shm"):
        self.path, self.peak, self.size = path, 0, 0
        self.base = self._used()
        self._halt = threading.Event()
        threading.Thread(target=self._run, daemon=True, name="shm-peak").start()

    def _used(self):
        try:
            st = os.statvfs(self.path)
        except OSError:
            return 0
        self.size = st.f_blocks * st.f_frsize
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def _run(self):
        while not self._halt.wait(0.002):
            self.peak = max(self.peak, self._used() - self.base)

    def report(self):
        self._halt.set()
        mib = 1 << 20
        return (f"shm: peak {self.peak} bytes ({self.peak / mib:.1f} MiB) of /dev/shm used by the "
                f"DataLoader, size {self.size / mib:.0f} MiB")


def setup(args):
    """The process group from the operator's (or torchrun's) environment; a
    plain `python train.py` is a group of one."""
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        sys.exit(f"train.py: --device cuda, but torch {torch.__version__} sees no CUDA device")
    if cuda:
        # cuBLAS is deterministic only with a fixed workspace.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        local = int(os.environ.get("LOCAL_RANK", int(os.environ["RANK"]) % torch.cuda.device_count()))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=args.timeout),
                            **({"device_id": device} if cuda else {}))
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    return device


def any_rank(flag, device):
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def slow_saves(seconds):
    """--save-seconds: DCP writes every rank's files, then rank 0 waits before
    it writes .metadata (what makes the checkpoint complete); a torch.save file
    is written, then held before its rename. A save cut off in that window
    leaves only a temporary, as a real large save would."""
    from torch.distributed.checkpoint import FileSystemWriter

    class SlowWriter(FileSystemWriter):
        def finish(self, metadata, results):
            time.sleep(seconds)
            return super().finish(metadata, results)

    real = dcp.save

    def save(state_dict, *, checkpoint_id=None, storage_writer=None, **kw):
        writer = storage_writer or SlowWriter(checkpoint_id)
        return real(state_dict, checkpoint_id=checkpoint_id, storage_writer=writer, **kw)

    dcp.save = save  # trainingjob.save looks it up at each call

    def torch_save(obj, f):
        torch.save(obj, f)
        f.flush()
        time.sleep(seconds)

    return torch_save


def save(args, step, model, opt, sched, torch_save):
    if args.save == "dcp":
        msd, osd = get_state_dict(model, opt)
        return tj.save({"model": msd, "optim": osd, "sched": sched.state_dict()}, step, dcp=True)
    path = None
    if dist.get_rank() == 0:
        state = {"model": model.module.state_dict(), "optim": opt.state_dict(), "sched": sched.state_dict()}
        path = tj.save(state, step, save_fn=torch_save)
    dist.barrier()  # no rank trains on before the file is there
    return path or os.path.join(tj.checkpoint_dir(), f"step-{step}.ckpt")


def load(path, model, opt, sched, device):
    """Either layout, whatever --save says now: the launcher picked the newest."""
    if os.path.isdir(path):
        msd, osd = get_state_dict(model, opt)
        state = {"model": msd, "optim": osd, "sched": sched.state_dict()}
        dcp.load(state, checkpoint_id=path)
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:
        state = torch.load(path, map_location=device, weights_only=True)
        model.module.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
    sched.load_state_dict(state["sched"])


def state_sha256(model):
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(ctypes.string_at(t.data_ptr(), t.numel() * t.element_size()))
    return h.hexdigest()


def eval_loss(model, data, device):
    xs, ys = zip(*(data[SAMPLES + i] for i in range(EVAL_SAMPLES)))
    with torch.no_grad():
        return F.cross_entropy(model(torch.stack(xs).to(device)), torch.tensor(ys, device=device)).item()


def main():
    args = settings()
    device = setup(args)
    rank, world = dist.get_rank(), dist.get_world_size()
    say = (lambda *a: print(*a, flush=True)) if rank == 0 else (lambda *a: None)

    torch.manual_seed(args.seed)
    net = Net(args.image_size).to(device)
    say(f"model: {sum(p.numel() for p in net.parameters())} parameters; {world} rank(s) on {device}")
    model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, args.steps))
    torch_save = slow_saves(args.save_seconds) if args.save_seconds > 0 else None

    start = 0
    r = tj.resume()
    if r:
        load(r.path, model, opt, sched, device)
        start = r.step
        say(f"resumed from step {start} path {r.path}")
    else:
        say("starting from scratch")
    # Each rank's launcher picked its checkpoint alone: they must agree.
    lo, hi = torch.tensor([start], device=device), torch.tensor([start], device=device)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if lo.item() != hi.item():
        print(f"rank {rank}: ranks resumed from steps {lo.item()} to {hi.item()}; refusing to train", flush=True)
        return 3

    data = SyntheticImages(args.seed, args.image_size)
    shm = ShmPeak()
    loader = DataLoader(
        data,
        batch_sampler=StepBatches(args.seed, start + 1, args.steps, rank, world, args.batch_size),
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        prefetch_factor=args.prefetch_factor if args.workers > 0 else None,
        pin_memory=device.type == "cuda",
    )
    batches = iter(loader)
    saved = start
    for step in range(start + 1, args.steps + 1):
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()  # DDP all-reduces the gradients here
        opt.step()
        sched.step()
        say(f"step {step} loss {loss.item():.6f}")
        # Every rank, every step: a stop that reached any rank stops all of
        # them after this same step; a SIGUSR1 to any saves on all.
        d = tj.step_end(step)
        if d.stop:
            why = tj.stop_signal() or f"{d.peer_stop['signal']} from rank {d.peer_stop['rank']}"
            print(f"rank {rank}: stop: {why} after step {step}", flush=True)
        if d.stop or d.save or step % args.ckpt_every == 0:
            # DCP is a collective: one rank skipping alone would hang the rest.
            if any_rank(d.stop and tj.should_skip_save(), device):
                say(f"not saving step {step}: a rank has no time left for it")
            elif saved != step:
                t0 = time.monotonic()
                path = save(args, step, model, opt, sched, torch_save)
                saved = step
                reason = "stop" if d.stop else "SIGUSR1" if d.save else "interval"
                say(f"saved step {step} ({reason}) to {path} in {time.monotonic() - t0:.3f}s")
        if d.stop:
            break
    else:
        loss = eval_loss(model.module, data, device)
        say(f"final step {args.steps} eval_loss {loss!r} state_sha256 {state_sha256(model.module)}")
    # Workers are stopped (and their /dev/shm freed) only after the save.
    del batches, loader
    print(f"rank {rank}: {shm.report()}", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
