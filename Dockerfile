# One image for the operator and the launcher. Both are static binaries, so
# the image needs nothing else: no shell, no libc, nothing to patch.
# `cargo xtask images` fills the build context with the binaries and builds
# it offline with buildah; nothing is pulled. `--push REGISTRY/REPO[:TAG]`
# and `--oci-archive PATH` ship the same image to a real cluster's registry.
FROM scratch
COPY trainingjob-operator launcher /
# 65532 is the conventional "nonroot" user of distroless images.
USER 65532:65532
ENTRYPOINT ["/trainingjob-operator"]
