"""The mirror in launcher_rules.py agrees with the launcher itself."""

import os
import re

import pytest

from conftest import REPO
from launcher_rules import HF_DIR, OTHER_DIR, STEP_DIR, STEP_FILE, parse_name

CHECKPOINT_RS = os.path.join(REPO, "launcher", "src", "checkpoint.rs")
NAMINGS = {"StepFile": STEP_FILE, "StepDir": STEP_DIR, "HfDir": HF_DIR, "OtherDir": OTHER_DIR}


def _rust_name_cases():
    """The `assert_eq!(parse_name(..), ..)` lines of checkpoint.rs's own
    `names` test, as (name, expected in the mirror's terms)."""
    with open(CHECKPOINT_RS) as f:
        src = f.read()
    body = src[src.index("fn names()"):]
    body = body[: body.index("\n    }\n")]
    cases = []
    for name, want in re.findall(r'assert_eq!\(parse_name\("([^"]*)"\), (.+?)\);', body):
        fin = re.fullmatch(r"fin\((\d+), Naming::(\w+)\)", want)
        tmp = re.fullmatch(r'tmp\("([^"]*)"\)', want)
        if fin:
            cases.append((name, ("final", int(fin.group(1)), NAMINGS[fin.group(2)])))
        elif tmp:
            cases.append((name, ("temp", tmp.group(1))))
        else:
            assert want == "None", f"unknown expectation {want!r} in checkpoint.rs"
            cases.append((name, None))
    return cases


@pytest.mark.skipif(not os.path.exists(CHECKPOINT_RS), reason="not run from the repository")
def test_mirror_parses_names_as_the_launchers_own_tests_say():
    cases = _rust_name_cases()
    assert len(cases) >= 15, "the names test in checkpoint.rs was not found whole"
    for name, want in cases:
        assert parse_name(name) == want, name


def test_mirror_knows_the_layouts_the_package_writes():
    assert parse_name("step-7.ckpt") == ("final", 7, STEP_FILE)
    assert parse_name("step-7.ckpt.tmp") == ("temp", "step-7.ckpt")
    assert parse_name("step-7") == ("final", 7, STEP_DIR)
    assert parse_name("step-7.tmp") == ("temp", "step-7")
    # What a replaced directory is moved aside as: a temporary whose final
    # name is no checkpoint, so the launcher neither times nor resumes it.
    assert parse_name("step-7.replaced.tmp") == ("temp", "step-7.replaced")
    assert parse_name("step-7.replaced") is None
