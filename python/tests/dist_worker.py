"""One rank of a two-process gloo job, run by test_torch.py: rank 1 gets
SIGTERM, both decide at the end of the step, both save one DCP checkpoint.
Arguments: rank world_size store_file result_file."""

import json
import os
import signal
import sys
import time

import torch
import torch.distributed as dist

import trainingjob as tj


def main():
    rank, world, store, result = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    if rank == 1:
        os.kill(os.getpid(), signal.SIGTERM)
        end = time.monotonic() + 10
        while not tj.should_stop() and time.monotonic() < end:
            time.sleep(0.001)
    decision = tj.step_end(5)
    # Each rank holds its own shard of "w" (DTensor-free: a per-rank key),
    # and a replicated "bias", as FSDP and DDP state dicts do.
    state = {f"w{rank}": torch.full((4,), float(rank)), "bias": torch.ones(2)}
    path = tj.save(state, 5, dcp=True)
    with open(result, "w") as f:
        json.dump({"decision": decision._asdict(), "path": path}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
