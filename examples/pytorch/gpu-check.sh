#!/usr/bin/env bash
# The PyTorch example on CUDA with NCCL, under the launcher, on a machine
# with GPUs: the checks the CPU-only test bed cannot make.
#
#   examples/pytorch/gpu-check.sh [train.py flags...]
#
# 1. An uninterrupted run: its final sha256.
# 2. The same run, SIGTERM to rank 0 mid-training (as a preemption): every
#    rank stops after one step, saves (DCP) and exits 0; the launcher's
#    report gives the measured save time and throughput, and from them the
#    grace period the operator would set (src/grace.rs: save p95 x 1.5 + 3 s,
#    rounded up, within [MIN_GRACE, NOTICE]).
# 3. A resume from that checkpoint to the end: its sha256 must equal 1's.
#
# Ranks: min(2, GPUs), one GPU each (NCCL refuses two ranks on one GPU).
# Settings: PYTHON (python3, with a CUDA build of torch), LAUNCHER (else
# target/release/launcher, built with cargo if missing), NOTICE (30),
# MIN_GRACE (5), STEPS (120), STOP_AT (60: the step after which rank 0 gets
# SIGTERM), WORK (a temporary directory). The default model has 12.6 M
# parameters (--image-size 256, a 150 MB checkpoint); pass e.g.
# `--image-size 512` for a larger save. GPU_CHECK_DEVICE=cpu runs the same
# checks on the CPU (gloo), to test this script where there is no GPU.
# Exit status: 0 all checks passed, 1 a check failed or no GPU.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3}
notice=${NOTICE:-30}
min_grace=${MIN_GRACE:-5}
steps=${STEPS:-120}
stop_at=${STOP_AT:-60}
device=${GPU_CHECK_DEVICE:-cuda}
export PYTHONPATH="$repo/python/src${PYTHONPATH:+:$PYTHONPATH}"

fail() { printf 'gpu-check: FAILED: %s\n' "$*" >&2; exit 1; }
say() { printf 'gpu-check: %s\n' "$*"; }

# No GPU: say so and stop, before anything is built or run.
gpus=$("$python" -c '
import sys
try:
    import torch
except ImportError as e:
    sys.exit(f"{sys.executable} cannot import torch: {e}")
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA GPU (CUDA build: {torch.version.cuda})")
print(torch.cuda.device_count())
' 2>&1) || { [ "$device" = cpu ] && gpus=2; } || fail "no GPU: $gpus"
[[ "$gpus" =~ ^[0-9]+$ ]] || fail "no GPU: $gpus"
world=$(( gpus < 2 ? gpus : 2 ))
if [ "$device" = cuda ]; then
    say "$("$python" -c 'import torch; print(torch.cuda.get_device_name(0), "x", torch.cuda.device_count(), "torch", torch.__version__, "NCCL", ".".join(map(str, torch.cuda.nccl.version())))')"
else
    say "GPU_CHECK_DEVICE=cpu: testing this script on the CPU with gloo; the numbers are not a GPU's"
fi

launcher=${LAUNCHER:-$repo/target/release/launcher}
if [ ! -x "$launcher" ]; then
    command -v cargo >/dev/null || fail "no launcher at $launcher and no cargo to build it: set LAUNCHER"
    say "building the launcher"
    (cd "$repo" && cargo build --release --quiet -p launcher)
fi

work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
say "ranks: $world; work directory: $work"
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
args=(--steps "$steps" --ckpt-every 20 --image-size 256 --batch-size 64 --device "$device" "$@")

# Starts every rank under a launcher of its own, as the operator does.
# $1: run name (checkpoints in $work/$1), $2: attempt.
start() {
    pids=()
    for ((r = 0; r < world; r++)); do
        RANK=$r LOCAL_RANK=$r WORLD_SIZE=$world MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
            TJ_WORLD_SIZE=$world \
            "$launcher" run --checkpoint-dir "$work/$1" --report "$work/$1-a$2-r$r.json" \
            --grace-seconds "$notice" --attempt "$2" --rank "$r" -- \
            "$python" "$here/train.py" "${args[@]}" >"$work/$1-a$2-r$r.log" 2>&1 &
        pids+=($!)
    done
}

# Waits for every rank of run $1, attempt $2; fails on a non-zero exit.
finish() {
    for ((r = 0; r < world; r++)); do
        wait "${pids[$r]}" || fail "$1 rank $r exited $?: see $work/$1-a$2-r$r.log"
    done
}

final() { grep '^final ' "$work/$1" | tail -1; }

say "1/3 an uninterrupted run of $steps steps"
start reference 1
finish reference 1
reference=$(final reference-a1-r0.log)
[ -n "$reference" ] || fail "no final line in $work/reference-a1-r0.log"
say "   $reference"

say "2/3 the same run, SIGTERM to rank 0 after step $stop_at"
start preempted 1
for ((i = 0; i < 6000; i++)); do
    grep -q "^step $stop_at " "$work/preempted-a1-r0.log" 2>/dev/null && break
    kill -0 "${pids[0]}" 2>/dev/null || fail "rank 0 ended before step $stop_at: $work/preempted-a1-r0.log"
    sleep 0.1
done
kill -TERM "${pids[0]}"
finish preempted 1
"$python" - "$work/preempted-a1-r0.json" "$notice" "$min_grace" <<'EOF' || fail "the stop: see the report above"
import json, math, sys
r = json.load(open(sys.argv[1]))
notice, min_grace = int(sys.argv[2]), int(sys.argv[3])
print(f"gpu-check:    report: state {r['state']}, exitCode {r['exitCode']}, "
      f"stopped after step {r.get('lastStep')}, saved step {r.get('lastCheckpoint', {}).get('step')}")
s = r.get("saves") or {}
if r["state"] != "signalled" or r["exitCode"] != 0 or r.get("lastStep") != r.get("lastCheckpoint", {}).get("step"):
    sys.exit("gpu-check:    expected a clean stop: signalled, exit 0, the stop step saved")
if not s.get("count"):
    sys.exit("gpu-check:    the launcher measured no save")
# src/grace.rs: ceil(save x SAFETY_FACTOR + OVERHEAD_SECONDS) within [min_grace, notice].
p95 = s["p95Seconds"]
needed = math.ceil(p95 * 1.5 + 3.0)
grace = min(max(needed, max(1, min(min_grace, notice))), notice)
print(f"gpu-check:    saves: {s['count']}, last {s['lastSeconds']:.3f}s of {s['lastBytes'] / 1e6:.1f} MB, "
      f"p95 {p95:.3f}s, throughput {s['bytesPerSecond'] / 1e6:.1f} MB/s")
print(f"gpu-check:    grace the operator would set: {grace}s "
      f"(needs ceil({p95:.3f} x 1.5 + 3) = {needed}s, within [{min_grace}, {notice}])"
      + ("" if needed <= notice else f"; GraceExceedsNotice by {needed - notice}s"))
EOF
grep -h '^rank .*: stop: ' "$work"/preempted-a1-r*.log | sed 's/^/gpu-check:    /'

say "3/3 the resume, to step $steps"
start preempted 2
finish preempted 2
grep -h 'resumed from step' "$work/preempted-a2-r0.log" | sed 's/^/gpu-check:    /'
resumed=$(final preempted-a2-r0.log)
say "   $resumed"
[ "$resumed" = "$reference" ] || fail "the resumed run ends differently from the uninterrupted one"
say "PASSED: the sha256 after a SIGTERM and a resume equals the uninterrupted run's"
