"""A trainer built on the package, run under the real launcher by
test_with_launcher.py: a step every few milliseconds, a save every 10 steps
and on a stop, each save held open a moment so the launcher can time it."""

import pickle
import sys
import time

import trainingjob as tj


def slow_pickle(obj, f):
    pickle.dump(obj, f)
    f.flush()
    time.sleep(0.05)  # stands in for a large state: the launcher times this save


def main():
    r = tj.resume()
    print(f"resume {r.path if r else None} {r.step if r else None}", flush=True)
    for step in range((r.step if r else 0) + 1, 100_000):
        time.sleep(0.005)  # stands in for a training step
        d = tj.step_end(step)
        if d.stop or step % 10 == 0:
            print("saved", tj.save({"step": step}, step, save_fn=slow_pickle), flush=True)
        if d.stop:
            print(f"stopped {step} {tj.stop_signal()} {tj.seconds_left():.3f}", flush=True)
            return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
