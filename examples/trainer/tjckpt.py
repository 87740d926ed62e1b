"""tjckpt: the trainer's side of the trainingjob-operator checkpoint contract.

Standard library only. Copy this file next to your training script, or import
it from the operator's examples. See docs/checkpoint-contract.md for the rules
it implements; in short:

    ck = tjckpt.Checkpointer()          # installs SIGTERM/SIGINT/SIGHUP/SIGUSR1 flags
    start = 0
    if ck.resume_path:
        state = load(ck.resume_path)    # ck.load_dir()/ck.load_file() verify it
        start = ck.resume_step
    for step in range(start + 1, total + 1):
        train_one_step()
        if ck.stop_requested or ck.save_requested() or step % every == 0:
            if not (ck.stop_requested and ck.should_skip_save()):
                ck.save_dir(step, {"model.bin": weights_bytes})
        if ck.stop_requested:
            sys.exit(0)

Call ck.step_done(step) after each step: the launcher reports the last step
completed (`lastStep`), so a preemption's cost is lastStep minus the step of
the checkpoint it resumes from. Ranks that train in lockstep without
torch.distributed can agree through the shared checkpoint volume with
FileRendezvous (see its docstring).

Signal handlers only set flags: saving inside a handler can deadlock in the
allocator or corrupt state the interrupted code was changing. The training
loop checks the flags between steps.
"""

import hashlib
import json
import os
import shutil
import signal
import threading
import time
from collections import deque

MANIFEST = "MANIFEST.json"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _fsync_dir(path):
    """A rename is durable only once its directory is fsynced."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path, data):
    """Writes bytes, or calls data(fileobj), then fsyncs. Returns (bytes, sha256)."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        if callable(data):
            data(_HashingWriter(f, h))
        else:
            f.write(data)
            h.update(data)
        f.flush()
        os.fsync(f.fileno())
        size = f.tell()
    return size, h.hexdigest()


class _HashingWriter:
    """Lets torch.save(obj, w) and friends stream into the file while we hash."""

    def __init__(self, f, h):
        self._f, self._h = f, h

    def write(self, b):
        self._h.update(b)
        return self._f.write(b)

    def flush(self):
        self._f.flush()

    def tell(self):
        return self._f.tell()


class Checkpointer:
    def __init__(self, directory=None, rank=None, world_size=None, install_signals=True):
        env = os.environ
        self.dir = directory or env.get("TJ_CHECKPOINT_DIR") or "checkpoints"
        self.rank = int(rank if rank is not None else env.get("TJ_RANK", "0") or 0)
        self.world_size = int(
            world_size if world_size is not None else env.get("TJ_WORLD_SIZE", "1") or 1
        )
        self.grace_seconds = float(env.get("TJ_GRACE_SECONDS") or 30)
        self.deadline_seconds = float(env.get("TJ_DEADLINE_SECONDS") or self.grace_seconds)
        self.deadline_file = env.get("TJ_DEADLINE_FILE")
        self.resume_path = env.get("TJ_RESUME_PATH") or None
        self.resume_step = int(env["TJ_RESUME_STEP"]) if self.resume_path else 0
        self.progress_file = env.get("TJ_PROGRESS_FILE") or None
        self.stop_signal = None
        self.last_save_seconds = None
        self._stop = threading.Event()
        self._save = threading.Event()
        self._stop_at = None
        self._launcher_deadline = None
        os.makedirs(self.dir, exist_ok=True)
        if install_signals:
            self.install_signal_handlers()

    # -- signals ----------------------------------------------------------

    def install_signal_handlers(self):
        """Call from the main thread (Python runs handlers there only)."""
        for s in STOP_SIGNALS:
            signal.signal(s, self._on_stop)
        signal.signal(signal.SIGUSR1, self._on_save)

    def _on_stop(self, signum, _frame):
        if not self._stop.is_set():
            self._stop_at = time.monotonic()
            self.stop_signal = signal.Signals(signum).name
            self._stop.set()

    def _on_save(self, _signum, _frame):
        self._save.set()

    @property
    def stop_requested(self):
        return self._stop.is_set()

    def save_requested(self):
        """True once per SIGUSR1: save, then keep training."""
        if self._save.is_set():
            self._save.clear()
            return True
        return False

    # -- deadline ---------------------------------------------------------

    def deadline(self):
        """time.monotonic() value by which the process should have exited,
        or None while no stop was requested. Prefers the launcher's deadline
        file (written just after it forwarded the signal, with the grace period
        counted from when the launcher got it); falls back to our own receipt
        time plus TJ_DEADLINE_SECONDS."""
        if not self._stop.is_set():
            return None
        if self._launcher_deadline is not None:
            return self._launcher_deadline
        if self.deadline_file:
            try:
                with open(self.deadline_file) as f:
                    d = json.load(f)
                # Kept: the launcher writes it once per run, and a rank
                # waiting for its peers asks every few milliseconds.
                self._launcher_deadline = time.monotonic() + (
                    d["deadlineUnixMs"] / 1000.0 - time.time())
                return self._launcher_deadline
            except (OSError, ValueError, KeyError):
                pass
        return self._stop_at + self.deadline_seconds

    def deadline_source(self):
        if self._launcher_deadline is not None or (
                self.deadline_file and os.path.exists(self.deadline_file)):
            return "launcher"
        return "env"

    def time_left(self):
        d = self.deadline()
        return None if d is None else d - time.monotonic()

    def should_skip_save(self, estimate_seconds=None, margin=1.25):
        """After a stop signal: True if the save (estimated, or as long as the
        last one) would not finish before the deadline. A save cut off by
        SIGKILL costs nothing thanks to the temporary name, but skipping it
        lets the process exit cleanly inside the grace period."""
        left = self.time_left()
        est = estimate_seconds if estimate_seconds is not None else self.last_save_seconds
        return left is not None and est is not None and left < est * margin

    # -- progress ---------------------------------------------------------

    def step_done(self, step, peer_stop=None):
        """Tells the launcher the last step completed, for the report's
        lastStep. peer_stop={"rank": r, "signal": name} says this rank is about
        to stop only because another rank was signalled, so that its launcher
        reports a preemption rather than a completed job. Replaced by rename,
        so the launcher never reads half a file; no fsync: it lives in /dev/shm
        and only matters while the pod does."""
        if not self.progress_file:
            return
        body = {"step": step}
        if peer_stop:
            body["peerStop"] = peer_stop
        part = self.progress_file + ".part"
        try:
            with open(part, "w") as f:
                f.write(json.dumps(body))
            os.replace(part, self.progress_file)
        except OSError:
            pass  # progress is a report nicety, never a reason to stop training

    # -- saving -----------------------------------------------------------

    def path_for(self, step, single_file=False):
        return os.path.join(self.dir, f"step-{step}" + (".ckpt" if single_file else ""))

    def save_file(self, step, data):
        """One-file checkpoint: step-N.ckpt.tmp, fsync, rename, fsync dir."""
        t0 = time.monotonic()
        final = self.path_for(step, single_file=True)
        tmp = final + ".tmp"
        _write_durably(tmp, data)
        os.rename(tmp, final)
        _fsync_dir(self.dir)
        self.last_save_seconds = time.monotonic() - t0
        return final

    def save_dir(self, step, files, hashes=True):
        """Multi-file checkpoint from one process: files is {relative name:
        bytes or callable(fileobj)}. Written under step-N.tmp/, MANIFEST.json
        last, then the directory is renamed to step-N."""
        t0 = time.monotonic()
        staging = self._staging(step)
        if os.path.exists(staging):
            shutil.rmtree(staging)  # our own earlier, failed try
        os.makedirs(staging)
        entries = self.write_files(step, files, hashes=hashes)
        path = self.commit(step, entries)
        self.last_save_seconds = time.monotonic() - t0
        return path

    def _staging(self, step):
        return self.path_for(step) + ".tmp"

    def write_files(self, step, files, hashes=True):
        """Writes this rank's files into the staging directory (created if
        needed) and returns their manifest entries. Multi-rank: every rank
        calls this, rank 0 gathers the entries and calls commit()."""
        staging = self._staging(step)
        os.makedirs(staging, exist_ok=True)
        entries = []
        for name, data in files.items():
            dest = os.path.join(staging, name)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            size, digest = _write_durably(dest, data)
            e = {"path": name, "bytes": size}
            if hashes:
                e["sha256"] = digest
            entries.append(e)
        for d in {os.path.dirname(os.path.join(staging, n)) for n in files}:
            _fsync_dir(d)
        return entries

    def commit(self, step, entries):
        """Rank 0 only, after every rank's write_files() returned: writes the
        manifest last, then renames the staging directory into place."""
        staging = self._staging(step)
        manifest = {
            "version": 1,
            "step": step,
            "worldSize": self.world_size,
            "files": sorted(entries, key=lambda e: e["path"]),
        }
        tmp = os.path.join(staging, MANIFEST + ".tmp")
        _write_durably(tmp, json.dumps(manifest, indent=1).encode())
        os.rename(tmp, os.path.join(staging, MANIFEST))
        _fsync_dir(staging)
        final = self.path_for(step)
        os.rename(staging, final)
        _fsync_dir(self.dir)
        return final

    def save_dir_distributed(self, step, files, gather, barrier, hashes=True):
        """Multi-rank save into one shared directory. gather(obj) must return
        the list of every rank's obj on rank 0 (None elsewhere), barrier() must
        wait for all ranks: e.g. torch.distributed.gather_object and
        torch.distributed.barrier. Each rank's files go under rank-<R>/.
        FileRendezvous.gather and .barrier also fit."""
        t0 = time.monotonic()
        mine = {f"rank-{self.rank:05d}/{n}": d for n, d in files.items()}
        entries = self.write_files(step, mine, hashes=hashes)
        everyone = gather(entries)
        path = None
        if self.rank == 0:
            path = self.commit(step, [e for rank_entries in everyone for e in rank_entries])
        barrier()
        self.last_save_seconds = time.monotonic() - t0
        return path or self.path_for(step)

    def keep_last(self, n):
        """Deletes all but the newest n complete step-N checkpoints (rank 0).
        Each is first renamed to a temporary name, so a crash halfway through
        deleting leaves something the launcher removes, never a torn
        checkpoint under a final name."""
        if self.rank != 0:
            return
        steps = []
        for name in os.listdir(self.dir):
            base = name[: -len(".ckpt")] if name.endswith(".ckpt") else name
            if base.startswith("step-") and base[5:].isdigit():
                steps.append((int(base[5:]), name))
        for _, name in sorted(steps, reverse=True)[n:]:
            p = os.path.join(self.dir, name)
            doomed = p + ".deleting.tmp"
            os.rename(p, doomed)
            if os.path.isdir(doomed):
                shutil.rmtree(doomed)
            else:
                os.remove(doomed)

    # -- loading ----------------------------------------------------------

    def scan_for_resume(self):
        """Without the launcher (a batch/v1 Job, a JobSet): finds the newest
        step-N checkpoint that is whole, the way the launcher would, and sets
        resume_path and resume_step from it. A directory counts only if its
        files match MANIFEST.json; temporaries (*.tmp) never count. Returns
        the path, or None to start from scratch."""
        if self.resume_path:
            return self.resume_path
        found = []
        for name in os.listdir(self.dir):
            base = name[: -len(".ckpt")] if name.endswith(".ckpt") else name
            if base.startswith("step-") and base[5:].isdigit():
                found.append((int(base[5:]), name))
        for step, name in sorted(found, reverse=True):
            path = os.path.join(self.dir, name)
            try:
                if os.path.isdir(path):
                    self.load_dir(path)
                elif not os.path.isfile(path):
                    continue
            except (OSError, ValueError, KeyError):
                continue  # torn or foreign: an older one may be whole
            self.resume_path, self.resume_step = path, step
            return path
        return None

    @staticmethod
    def load_file(path):
        with open(path, "rb") as f:
            return f.read()

    @staticmethod
    def load_dir(path, verify_hashes=True):
        """Returns {name: bytes} after checking the manifest, so a checkpoint
        that does not match it is refused rather than half-loaded."""
        with open(os.path.join(path, MANIFEST)) as f:
            manifest = json.load(f)
        out = {}
        for e in manifest["files"]:
            with open(os.path.join(path, e["path"]), "rb") as f:
                data = f.read()
            if len(data) != e["bytes"]:
                raise ValueError(f"{path}/{e['path']}: {len(data)} bytes, manifest says {e['bytes']}")
            if verify_hashes and "sha256" in e and hashlib.sha256(data).hexdigest() != e["sha256"]:
                raise ValueError(f"{path}/{e['path']}: sha256 does not match the manifest")
            out[e["path"]] = data
        return out


# -- ranks agreeing through files ------------------------------------------


class RendezvousError(RuntimeError):
    """A peer did not arrive in time, or the ranks are not running the same
    sequence of collective operations."""


class FileRendezvous:
    """all_gather, gather and barrier through files on the shared (RWX)
    checkpoint volume, for ranks that have no process group: each rank
    replaces <root>/.rendezvous/attempt-<A>/rank-<R>.json (by rename, so a
    reader never sees half of it) and polls the others' files.

    Every rank must call the same operations in the same order (as with
    torch.distributed collectives); each call is numbered, and a rank's file
    keeps its last few calls' values. That is enough because no rank can
    start call n+2 before every rank has finished reading call n: call n+1
    waits for all of them. So a value is never overwritten before its readers
    have it, however the ranks interleave.

    The attempt number keeps a restarted gang from mistaking the files of the
    gang before it for its peers; rank 0 deletes older attempts' directories
    once every rank of this attempt has arrived (the operator starts an
    attempt only after every pod of the last one is gone).

    abort() is polled while waiting: a reason string stops the wait with
    RendezvousError (a signalled rank whose peer is gone must not wait past
    its grace period)."""

    KEEP = 4

    def __init__(self, root, rank, world_size, attempt, timeout=600.0, poll=0.002, abort=None):
        self.rank, self.world_size = int(rank), int(world_size)
        self.attempt = str(attempt)
        self.timeout, self.poll, self.abort = float(timeout), float(poll), abort
        self.base = os.path.join(root, ".rendezvous")
        self.dir = os.path.join(self.base, f"attempt-{self.attempt}")
        os.makedirs(self.dir, exist_ok=True)
        self._mine = self._path(self.rank)
        if os.path.exists(self._mine):
            raise RendezvousError(
                f"{self._mine} already exists: rank {self.rank} of attempt {self.attempt} ran "
                "before. TJ_ATTEMPT must change on every restart (the operator does this).")
        self._seq = 0
        self._recent = deque(maxlen=self.KEEP)

    def _path(self, rank):
        return os.path.join(self.dir, f"rank-{rank:05d}.json")

    def _publish(self):
        part = self._mine + ".part"
        with open(part, "w") as f:
            json.dump({"rank": self.rank, "seq": self._seq, "recent": list(self._recent)}, f)
        os.replace(part, self._mine)

    def _read(self, rank):
        try:
            with open(self._path(rank)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None  # not there yet

    def all_gather(self, key, value):
        """Every rank's value for this call, indexed by rank. key names the
        call: ranks that disagree on it have diverged, which is an error."""
        self._seq += 1
        seq = self._seq
        self._recent.append([seq, key, value])
        self._publish()
        out = [None] * self.world_size
        out[self.rank] = value
        waiting = set(range(self.world_size)) - {self.rank}
        t0 = time.monotonic()
        last = {}
        while True:
            for r in sorted(waiting):
                d = self._read(r)
                if d is None or d.get("seq", 0) < seq:
                    last[r] = d
                    continue
                entry = next((e for e in d["recent"] if e[0] == seq), None)
                if entry is None:
                    raise RendezvousError(
                        f"rank {r} no longer holds call {seq} ({key}): ranks out of step")
                if entry[1] != key:
                    raise RendezvousError(
                        f"call {seq}: rank {self.rank} is at {key!r}, rank {r} at {entry[1]!r}")
                out[r] = entry[2]
                waiting.discard(r)
            if not waiting:
                return out
            reason = self.abort() if self.abort else None
            if reason or time.monotonic() - t0 > self.timeout:
                seen = ", ".join(
                    f"rank {r} at {self._describe(last.get(r))}" for r in sorted(waiting))
                why = reason or f"timed out after {self.timeout:g}s"
                raise RendezvousError(f"{why} waiting at {key!r} (call {seq}): {seen}")
            time.sleep(self.poll)

    @staticmethod
    def _describe(d):
        if not d:
            return "nothing yet"
        e = d["recent"][-1] if d.get("recent") else None
        return f"call {d.get('seq')} ({e[1]!r})" if e else f"call {d.get('seq')}"

    def gather(self, key, value):
        """Every rank's value on rank 0, None elsewhere."""
        out = self.all_gather(key, value)
        return out if self.rank == 0 else None

    def barrier(self, key):
        self.all_gather(key, None)

    def remove_older_attempts(self):
        """Rank 0, once every rank of this attempt has arrived."""
        if self.rank != 0:
            return
        try:
            names = os.listdir(self.base)
        except OSError:
            return
        for name in names:
            if name.startswith("attempt-") and name != f"attempt-{self.attempt}":
                shutil.rmtree(os.path.join(self.base, name), ignore_errors=True)
