#!/usr/bin/env bash
# Runs the trainingjob Python package's tests in a virtual environment of
# their own.
#
#   python/run-tests.sh [VENV_DIR] [PYTEST_ARGS...]
#
# A first argument that starts with "-" is taken for pytest's.
# VENV_DIR defaults to a cache outside the repository, keyed by a hash of
# pyproject.toml so that a change of dependencies gets a fresh venv. The
# package is installed editable, so later runs test the sources as they are
# without reinstalling. pip uses its own configuration (index, proxy, certs).
# PyTorch and transformers are not installed here: their tests are skipped
# unless VENV_DIR already has them.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-python3}
key=$(sha256sum "$here/pyproject.toml" | cut -c1-16)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/trainingjob-operator
venv=$cache/pyvenv-$key
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    venv=${1:-$venv}
    shift
fi

say() { printf 'run-tests: %s\n' "$*" >&2; }

# Debian ships the venv module without ensurepip until python3-venv is
# installed; only then is apt needed.
make_venv() {
    "$python" -m venv "$venv" >/dev/null 2>&1 && return 0
    rm -rf "$venv"
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        say "'$python -m venv' failed; install python3-venv (Debian) and run again"
        return 1
    fi
    say "'$python -m venv' failed: installing python3-venv with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    "$python" -m venv "$venv"
}

# What the venv was last set up for: the dependencies and this checkout (an
# editable install points at one checkout's sources).
stamp="$key $here"

if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    mkdir -p "$(dirname "$venv")"
    make_venv
fi
if [ "$(cat "$venv/.trainingjob-stamp" 2>/dev/null)" != "$stamp" ]; then
    say "installing pytest and the package (editable) into $venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e "$here[test]"
    printf '%s\n' "$stamp" >"$venv/.trainingjob-stamp"
fi

cd "$here"
set +e
"$venv/bin/python" -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
    say "FAILED: pytest collected no tests (exit 5); a test run that runs nothing proves nothing"
    exit 1
fi
exit "$rc"
