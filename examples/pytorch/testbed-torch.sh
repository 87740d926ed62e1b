#!/usr/bin/env bash
# PyTorch for the test bed's pods, installed once per version outside the
# repository and mounted read-only into the pods (hostPath), never baked into
# an image. Prints the site-packages directory to mount.
#
#   examples/pytorch/testbed-torch.sh            # tests/pytorch.rs calls it
#
# Why a mount: PyPI's torch for Linux x86_64 is the CUDA build, 5.3 GB
# installed with its nvidia-* wheels (the CPU-only build lives on another
# index, which this project's machines do not reach), and `import torch`
# needs those libraries even on CPU. Through `cargo xtask images` that would be
# a vfs copy, a gzip of 5 GB on every rebuild and a containerd unpack, and
# a hash of every byte of the context on every warm run. A directory costs
# nothing once installed, and the trainer image's Debian python3 (3.11,
# bookworm: xtask/src/images.rs) runs it: pip installs for that interpreter's
# tags (--python-version/--abi/--platform), whatever python runs pip.
#
# Settings: TJO_TORCH_VERSION (2.15.0), TJO_CACHE_DIR
# (~/.cache/trainingjob-operator). Concurrent callers wait on one lock; a cut
# install is never used (it becomes complete only by a final rename).
set -euo pipefail

version=${TJO_TORCH_VERSION:-2.15.0}
pyver=3.11   # the trainer image's python3 (Debian bookworm)
# numpy only spares every import torch's "Failed to initialize NumPy".
requirements=("torch==$version" "numpy==2.4.6")
cache=${TJO_CACHE_DIR:-$HOME/.cache/trainingjob-operator}
# Keyed by what is installed: another version or list is another directory.
key=$(printf '%s\n' "$pyver" "${requirements[@]}" | sha256sum | cut -c1-8)
dir=$cache/torch-$version-cp${pyver/./}-$key
site=$dir/site-packages

say() { printf 'testbed-torch: %s\n' "$*" >&2; }

mkdir -p "$cache"
exec 9>"$cache/.torch-install.lock"
flock 9
if [ -d "$site" ]; then
    echo "$site"
    exit 0
fi

pip=(python3 -m pip)
if ! "${pip[@]}" --version >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { say "python3 has no pip: install python3-pip"; exit 1; }
    say "installing python3-pip with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
fi

# Every manylinux tag that bookworm's glibc 2.36 runs: with --platform pip
# takes only the tags it is given, and torch's wheels use several.
platforms=(--platform manylinux2014_x86_64)
for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done

partial=$dir/site-packages.partial
rm -rf "$partial"
mkdir -p "$dir"
say "installing ${requirements[*]} for cp${pyver/./} into $dir (a cold install downloads about 3.5 GB)"
start=$(date +%s)
"${pip[@]}" install --quiet --no-cache-dir --disable-pip-version-check \
    --target "$partial" --only-binary=:all: \
    --python-version "$pyver" --implementation cp --abi "cp${pyver/./}" \
    "${platforms[@]}" \
    "${requirements[@]}" >&2
mv "$partial" "$site"
say "installed in $(( $(date +%s) - start )) s: $(du -sh "$site" | cut -f1)"
echo "$site"
