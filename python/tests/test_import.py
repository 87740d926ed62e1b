"""Importing the package: cheap, torch-free, handlers in place."""

import json

from conftest import run_python

PROBE = """
import json, signal, sys
import trainingjob
print(json.dumps({
    "torch": "torch" in sys.modules,
    "transformers": "transformers" in sys.modules,
    "sigterm_ours": getattr(signal.getsignal(signal.SIGTERM), "_trainingjob", False),
    "sigusr1_ours": getattr(signal.getsignal(signal.SIGUSR1), "_trainingjob", False),
    "sigint_ours": getattr(signal.getsignal(signal.SIGINT), "_trainingjob", False),
}))
"""


def test_import_pulls_in_neither_torch_nor_transformers_and_installs_handlers():
    r = run_python(PROBE)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got == {
        "torch": False,
        "transformers": False,
        "sigterm_ours": True,
        "sigusr1_ours": True,
        # Ctrl-C still interrupts a script run without the launcher.
        "sigint_ours": False,
    }


def test_under_the_launcher_sigint_is_a_stop_too(tmp_path):
    r = run_python(PROBE, env={"TJ_DEADLINE_FILE": str(tmp_path / "d")})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["sigint_ours"] is True
