"""The launcher's rules for a complete checkpoint, mirrored from
launcher/src/checkpoint.rs so that tests can hold what the package writes to
them. Each function names the Rust function it copies;
test_launcher_rules.py checks the mirror against the Rust unit tests' own
cases, so the two cannot drift apart unnoticed.
"""

import json
import os
import string

MANIFEST = "MANIFEST.json"  # checkpoint.rs `MANIFEST`
DCP_METADATA = ".metadata"  # checkpoint.rs `DCP_METADATA`
HF_STATE = "trainer_state.json"  # checkpoint.rs `HF_STATE`
HF_INCOMPLETE = "checkpoint-is-incomplete.txt"  # checkpoint.rs `HF_INCOMPLETE`

STEP_FILE, STEP_DIR, HF_DIR, OTHER_DIR = "StepFile", "StepDir", "HfDir", "OtherDir"
_IDENT = set(string.ascii_letters + string.digits + "-_")


def parse_step(s):
    """checkpoint.rs `parse_step`: ASCII digits only, and fits a u64."""
    if not s or not all(c in string.digits for c in s):
        return None
    n = int(s)
    return n if n < 2**64 else None


def _final(step, naming):
    return None if step is None else ("final", step, naming)


def _generic(name):
    """The tail of checkpoint.rs `parse_name`: `<prefix>-<N>` / `<prefix>_<N>`."""
    digits = len(name) - len(name.rstrip(string.digits))
    if digits == 0 or digits == len(name):
        return None
    prefix, n = name[:-digits], name[-digits:]
    sep_ok = prefix.endswith(("-", "_"))
    ident_ok = all(c in _IDENT for c in prefix) and not prefix.startswith(".")
    return _final(parse_step(n), OTHER_DIR) if sep_ok and ident_ok else None


def parse_name(name):
    """checkpoint.rs `parse_name`: ("temp", final_name), ("final", step,
    naming) or None."""
    if name.endswith(".tmp"):
        base = name[: -len(".tmp")]
        return ("temp", base) if base else None
    if name.startswith("tmp-checkpoint-"):
        n = name[len("tmp-checkpoint-"):]
        return ("temp", "checkpoint-" + n) if parse_step(n) is not None else None
    if name.startswith("step-"):
        n = name[len("step-"):]
        if n.endswith(".ckpt"):
            return _final(parse_step(n[: -len(".ckpt")]), STEP_FILE)
        return _final(parse_step(n), STEP_DIR)
    if name.startswith("checkpoint-"):
        return _final(parse_step(name[len("checkpoint-"):]), HF_DIR)
    return _generic(name)


def _check_manifest(path, step, raw):
    """checkpoint.rs `check_manifest`, without hashes (the launcher checks
    those only for the checkpoint it resumes from)."""
    try:
        m = json.loads(raw)
        files = m["files"]
    except (ValueError, KeyError, TypeError):
        return "bad: manifest not valid"
    if m.get("step") is not None and m["step"] != step:
        return "bad: manifest step"
    if not files:
        return "bad: manifest lists no files"
    for f in files:
        rel = f["path"]
        parts = rel.split("/")
        if not rel or os.path.isabs(rel) or any(p in ("", ".", "..") for p in parts):
            return "bad: path outside"
        full = os.path.join(path, rel)
        if not os.path.isfile(full):
            return f"bad: {rel} missing"
        if os.path.getsize(full) != f["bytes"]:
            return f"bad: {rel} size"
    return "complete"


def _check_hf_state(path):
    """checkpoint.rs `check_hf_state`: a whole JSON object."""
    try:
        with open(path, "rb") as f:
            ok = isinstance(json.load(f), dict)
    except FileNotFoundError:
        return "bad: no trainer_state.json"
    except ValueError:
        ok = False
    return "complete" if ok else "bad: trainer_state.json torn"


def check(path, step, naming):
    """checkpoint.rs `check`: "complete", "not-checkpoint" or "bad: ..."."""
    if not os.path.isdir(path):
        return "complete" if os.path.getsize(path) > 0 else "bad: empty file"
    if os.path.exists(os.path.join(path, HF_INCOMPLETE)):
        return "bad: incomplete marker"
    try:
        with open(os.path.join(path, MANIFEST), "rb") as f:
            return _check_manifest(path, step, f.read())
    except FileNotFoundError:
        pass
    if os.path.isfile(os.path.join(path, DCP_METADATA)):
        return "complete"
    if naming == HF_DIR:
        return _check_hf_state(os.path.join(path, HF_STATE))
    if naming == STEP_DIR:
        return "bad: no manifest or metadata"
    return "not-checkpoint"


def scan(directory):
    """checkpoint.rs `scan`: (candidates [(name, step, naming)], temporaries)."""
    candidates, temporaries = [], []
    for name in sorted(os.listdir(directory)):
        parsed = parse_name(name)
        if parsed is None:
            continue
        if parsed[0] == "temp":
            temporaries.append(name)
            continue
        _, step, naming = parsed
        # A file named like a directory layout, or the reverse, is no candidate.
        if os.path.isdir(os.path.join(directory, name)) == (naming != STEP_FILE):
            candidates.append((name, step, naming))
    return candidates, temporaries


def complete_checkpoints(directory):
    """The names the launcher would count as complete, newest first
    (checkpoint.rs `scan`, `order`, `check`)."""
    candidates, _ = scan(directory)
    done = [
        (step, name)
        for name, step, naming in candidates
        if check(os.path.join(directory, name), step, naming) == "complete"
    ]
    return [name for step, name in sorted(done, key=lambda sn: (-sn[0], sn[1]))]


def resume_pick(directory):
    """What the launcher would export as TJ_RESUME_PATH's name (checkpoint.rs
    `select`: newest complete), or None."""
    done = complete_checkpoints(directory)
    return done[0] if done else None
