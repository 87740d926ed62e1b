//! The project's images, built offline with buildah and imported into the
//! node's containerd. Nothing is pulled from a registry: every image is
//! `FROM scratch` plus static binaries, or a Debian rootfs made with
//! debootstrap from the machine's own apt mirror.
//!
//! Each image is keyed by a hash of its Containerfile and build context. The
//! key is stored as a label on the containerd image, so a warm run costs one
//! `ctr images ls`; the OCI archive is kept in the cache, so a node whose
//! containerd store was wiped re-imports without rebuilding.

use crate::containerd::{containerd_ready, ctr};
use crate::util::{apt_install, have, output, run, step, succeeds, write, Paths};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The pod sandbox image; containerd's `sandbox_image` names exactly this.
pub const PAUSE_IMAGE: &str = "localhost/tjo-pause:dev";
/// Signal, mount and log probes for the node tests (`images/test`).
pub const TEST_IMAGE: &str = "localhost/tjo-test:dev";
/// The trainer base image: Debian bookworm with python3 (`images/python`).
pub const PYTHON_IMAGE: &str = "localhost/tjo-python:dev";
/// The example trainer (`examples/trainer`) on the python base.
pub const TRAINER_IMAGE: &str = "localhost/tjo-trainer:dev";
/// The operator and the launcher, static, from the repository's Dockerfile.
pub const OPERATOR_IMAGE: &str = "localhost/trainingjob-operator:dev";

/// `helm --set` arguments that point the chart at `OPERATOR_IMAGE`, this
/// checkout's build, instead of the chart's published image.
pub fn operator_image_values() -> [String; 4] {
    let (repository, tag) = OPERATOR_IMAGE
        .rsplit_once(':')
        .expect("OPERATOR_IMAGE has a tag");
    [
        "--set".into(),
        format!("image.repository={repository}"),
        "--set".into(),
        format!("image.tag={tag}"),
    ]
}

/// The containerd image label that holds the inputs' hash.
const INPUTS_LABEL: &str = "dev.trainingjob.inputs";

/// The debootstrap rootfs of the trainer base image. Changing any of these
/// changes the cache key, so a stale rootfs is never reused.
const DEBIAN_SUITE: &str = "bookworm";
const DEBIAN_VARIANT: &str = "minbase";
const DEBIAN_PACKAGES: &[&str] = &["python3", "python-is-python3"];

/// `cargo xtask images`: every image the tests and the demo run.
pub fn build_and_import(paths: &Paths) -> Result<()> {
    let started = Instant::now();
    if !containerd_ready() {
        bail!("the node's containerd is not running: run `cargo xtask cluster up` first");
    }
    ensure_pause(paths)?;
    ensure_test_image(paths)?;
    ensure_python_image(paths)?;
    build_image(
        paths,
        &paths.root.join("images/trainer/Containerfile"),
        &paths.root.join("examples/trainer"),
        TRAINER_IMAGE,
    )?;
    ensure_operator_image(paths)?;
    step(format!(
        "images ready in {:.1}s: {TEST_IMAGE}, {PYTHON_IMAGE}, {TRAINER_IMAGE}, {OPERATOR_IMAGE} \
         (use imagePullPolicy: Never or IfNotPresent)",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The sandbox image, which the kubelet needs before any pod can start.
pub fn ensure_pause(paths: &Paths) -> Result<()> {
    let ctx = context_dir(paths, "pause")?;
    compile_static_c(&paths.root.join("images/pause/pause.c"), &ctx.join("pause"))?;
    build_image(
        paths,
        &paths.root.join("images/pause/Containerfile"),
        &ctx,
        PAUSE_IMAGE,
    )
}

fn ensure_test_image(paths: &Paths) -> Result<()> {
    let ctx = context_dir(paths, "test")?;
    let bin = ctx.join("bin");
    std::fs::create_dir_all(&bin)?;
    compile_static_c(&paths.root.join("images/test/probe.c"), &bin.join("probe"))?;
    let busybox = busybox_static(paths)?;
    std::fs::copy(&busybox, bin.join("busybox"))?;
    let sh = bin.join("sh");
    if std::fs::symlink_metadata(&sh).is_err() {
        std::os::unix::fs::symlink("busybox", &sh)?;
    }
    build_image(
        paths,
        &paths.root.join("images/test/Containerfile"),
        &ctx,
        TEST_IMAGE,
    )
}

fn ensure_python_image(paths: &Paths) -> Result<()> {
    let ctx = debian_rootfs(paths)?;
    build_image(
        paths,
        &paths.root.join("images/python/Containerfile"),
        &ctx,
        PYTHON_IMAGE,
    )
}

/// The repository's Dockerfile with the static operator and launcher as
/// its context.
fn ensure_operator_image(paths: &Paths) -> Result<()> {
    let (archive, key) = operator_archive(paths)?;
    import(&archive, &key, OPERATOR_IMAGE)
}

/// The operator's image as a cached OCI archive (built if its inputs
/// changed), and its inputs' hash.
fn operator_archive(paths: &Paths) -> Result<(PathBuf, String)> {
    let bin = crate::release::static_binaries(paths)?;
    let ctx = context_dir(paths, "operator")?;
    for name in ["trainingjob-operator", "launcher"] {
        std::fs::copy(bin.join(name), ctx.join(name))
            .with_context(|| format!("copying {name} into the image's context"))?;
    }
    build_archive(paths, &paths.root.join("Dockerfile"), &ctx, OPERATOR_IMAGE)
}

/// `cargo xtask images --oci-archive PATH --push REF`: the operator's image
/// (the one image a cluster runs; trainer images are the users' own) named
/// `reference`, written to `oci_archive` and/or pushed to its registry.
/// Needs no cluster. buildah pushes with the credentials of `buildah login`
/// (or `REGISTRY_AUTH_FILE`).
pub fn export_operator(
    paths: &Paths,
    reference: &str,
    oci_archive: Option<&Path>,
    push: bool,
) -> Result<()> {
    let (archive, _) = operator_archive(paths)?;
    run(buildah(paths)
        .args(["pull", "--quiet"])
        .arg(format!("oci-archive:{}", archive.display()))
        .stdout(Stdio::null()))?;
    run(buildah(paths).args(["tag", OPERATOR_IMAGE, reference]))?;
    let result = (|| {
        if let Some(path) = oci_archive {
            let partial = path.with_extension("partial");
            let _ = std::fs::remove_file(&partial);
            run(buildah(paths)
                .args(["push", "--quiet", reference])
                .arg(format!("oci-archive:{}:{reference}", partial.display())))?;
            std::fs::rename(&partial, path)?;
            step(format!("wrote {reference} to {}", path.display()));
        }
        if push {
            step(format!("pushing {reference}"));
            run(buildah(paths)
                .args(["push", "--quiet", reference])
                .arg(format!("docker://{reference}")))
            .with_context(|| format!("pushing {reference}; log in with `buildah login` first"))?;
        }
        Ok(())
    })();
    // The store only ever holds images on their way to an archive.
    let _ = output(buildah(paths).args(["rmi", "--force", reference, OPERATOR_IMAGE]));
    result
}

/// The hook for every image: builds `containerfile` with `context` as `tag`
/// and imports it into the node's containerd (namespace `k8s.io`, where the
/// kubelet looks). Skips the import when containerd already holds an image
/// of the same inputs.
pub fn build_image(paths: &Paths, containerfile: &Path, context: &Path, tag: &str) -> Result<()> {
    let (archive, key) = build_archive(paths, containerfile, context, tag)?;
    import(&archive, &key, tag)
}

/// The OCI archive of `containerfile` built with `context` as `tag`, and
/// its inputs' hash. Built only when no archive of the same inputs is
/// cached.
///
/// A `FROM` naming another of our `localhost/` images is loaded into
/// buildah from that image's cached archive (never from a registry), and
/// the base's archive name, which carries its inputs' hash, is one of this
/// image's inputs: rebuilding a base rebuilds what is built on it.
fn build_archive(
    paths: &Paths,
    containerfile: &Path,
    context: &Path,
    tag: &str,
) -> Result<(PathBuf, String)> {
    let archives = paths.cache.join("images");
    std::fs::create_dir_all(&archives)?;
    let mut bases = Vec::new();
    for base in local_bases(&std::fs::read_to_string(containerfile)?) {
        let archive = cached_archive(&archives, &base).with_context(|| {
            format!(
                "{} is built FROM {base}, which is not built yet",
                containerfile.display()
            )
        })?;
        bases.push((base, archive));
    }
    let mut key = inputs_hash(containerfile, context)?;
    for (_, archive) in &bases {
        key = sha256(&format!("{key} {}", archive.display()))?;
    }
    let archive = archives.join(format!("{}-{}.oci.tar", file_stem(tag), &key[..16]));
    if archive.is_file() {
        return Ok((archive, key));
    }
    apt_install(&["buildah"])?;
    step(format!("building {tag} with buildah"));
    for (base, base_archive) in &bases {
        if !succeeds(buildah(paths).args(["inspect", "--type", "image", base])) {
            run(buildah(paths)
                .args(["pull", "--quiet"])
                .arg(format!("oci-archive:{}", base_archive.display()))
                .stdout(Stdio::null()))?;
        }
    }
    let partial = archive.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    run(buildah(paths)
        .args(["bud", "--isolation", "chroot", "--layers=false"])
        .args(["--pull=never", "--quiet", "-f"])
        .arg(containerfile)
        .args(["-t", tag])
        .arg(context)
        .stdout(Stdio::null()))
    .with_context(|| format!("building {tag}"))?;
    run(buildah(paths)
        .args(["push", "--quiet", tag])
        .arg(format!("oci-archive:{}:{tag}", partial.display())))?;
    // The archive is the cached artefact; a second copy in buildah's
    // vfs store would only double the disk use.
    let _ = output(buildah(paths).args(["rmi", "--force", tag]));
    prune_archives(&archives, tag);
    std::fs::rename(&partial, &archive)?;
    Ok((archive, key))
}

/// Imports `archive` into the node's containerd as `tag`, labelled with its
/// inputs' hash; a no-op when containerd already holds those inputs.
fn import(archive: &Path, key: &str, tag: &str) -> Result<()> {
    if imported_key(tag).as_deref() == Some(key) {
        step(format!("{tag} is up to date"));
        return Ok(());
    }
    let started = Instant::now();
    step(format!("importing {tag} into containerd"));
    run(ctr()
        .args(["images", "import"])
        .arg(archive)
        .stdout(Stdio::null()))
    .with_context(|| format!("importing {}", archive.display()))?;
    run(ctr()
        .args(["images", "label", tag, &format!("{INPUTS_LABEL}={key}")])
        .stdout(Stdio::null()))?;
    step(format!(
        "{tag} ready in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The `FROM` images of a Containerfile that are ours (`localhost/...`).
fn local_bases(containerfile: &str) -> Vec<String> {
    containerfile
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            if !words.next()?.eq_ignore_ascii_case("FROM") {
                return None;
            }
            words
                .find(|w| !w.starts_with("--"))
                .filter(|image| image.starts_with("localhost/"))
                .map(str::to_string)
        })
        .collect()
}

/// The archive `build_image` keeps for `tag` (one at most: older ones are
/// pruned).
fn cached_archive(dir: &Path, tag: &str) -> Option<PathBuf> {
    let prefix = format!("{}-", file_stem(tag));
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        (name.starts_with(&prefix) && name.ends_with(".oci.tar")).then(|| e.path())
    })
}

fn sha256(text: &str) -> Result<String> {
    let out = output(Command::new("sh").args(["-c", "printf %s \"$1\" | sha256sum", "sha", text]))?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .context("sha256sum printed nothing")
}

/// Archives of earlier inputs of `tag`: nothing will import them again.
fn prune_archives(dir: &Path, tag: &str) {
    let prefix = format!("{}-", file_stem(tag));
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".oci.tar") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The inputs' hash containerd holds for `tag`, if it holds the image at all.
/// The hash of the inputs the imported image `tag` was built from: it changes
/// exactly when the image does, so a pod annotated with it rolls then.
pub fn imported_key(tag: &str) -> Option<String> {
    let list = output(ctr().args(["images", "ls", &format!("name=={tag}")])).ok()?;
    let prefix = format!("{INPUTS_LABEL}=");
    list.lines()
        .skip(1)
        .flat_map(|l| l.split([' ', '\t', ',']))
        .find_map(|w| w.strip_prefix(&prefix).map(str::to_string))
}

/// buildah with a store of its own: vfs works on any filesystem and needs no
/// fuse-overlayfs; chroot isolation needs no user namespaces.
fn buildah(paths: &Paths) -> Command {
    let mut cmd = Command::new("buildah");
    cmd.arg("--root")
        .arg(paths.cache.join("buildah/storage"))
        .args(["--runroot", "/run/tjo-buildah", "--storage-driver", "vfs"])
        .stdin(Stdio::null());
    cmd
}

/// sha256 of the Containerfile and of every file, link and mode in the
/// context, in a stable order.
fn inputs_hash(containerfile: &Path, context: &Path) -> Result<String> {
    let script = "set -e; cd \"$2\"; { sha256sum < \"$1\"; \
                  find . -type l -printf '%p -> %l\\n' | LC_ALL=C sort; \
                  find . -type f -printf '%m %p\\n' | LC_ALL=C sort; \
                  find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum; } | sha256sum";
    let out = output(
        Command::new("sh")
            .args(["-c", script, "hash"])
            .arg(containerfile)
            .arg(context),
    )?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .context("sha256sum printed nothing")
}

/// A folder in the cache where an image's build context is assembled.
fn context_dir(paths: &Paths, name: &str) -> Result<PathBuf> {
    let dir = paths.cache.join("images").join(format!("{name}-context"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn file_stem(tag: &str) -> String {
    tag.replace(['/', ':'], "_")
}

/// A static binary from one C file: glibc's static libc is enough for code
/// that resolves no names, and gcc is on every Debian build machine.
fn compile_static_c(source: &Path, out: &Path) -> Result<()> {
    // A gcc from elsewhere than Debian's packages is as good.
    if !have("gcc") {
        apt_install(&["gcc", "libc6-dev"])?;
    }
    run(Command::new("gcc")
        .args(["-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(out)
        .arg(source))
    .with_context(|| format!("compiling {}", source.display()))
}

/// Debian's statically linked busybox: the test image's `/bin/sh`, for the
/// shell-form test. Fetched with `apt-get download` (no install, so it cannot
/// conflict with the host's own busybox) and cached by package version.
fn busybox_static(paths: &Paths) -> Result<PathBuf> {
    let dir = paths.cache.join("debs");
    std::fs::create_dir_all(&dir)?;
    let version = output(Command::new("apt-cache").args(["policy", "busybox-static"]))?
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Candidate:")
                .map(|v| v.trim().to_string())
        })
        .filter(|v| v != "(none)");
    let cached = |v: &str| dir.join(format!("busybox-{}", v.replace(':', "_")));
    if let Some(v) = &version {
        if cached(v).is_file() {
            return Ok(cached(v));
        }
    }
    let Some(version) = version else {
        bail!("apt knows no busybox-static package: run `apt-get update`");
    };
    step(format!(
        "fetching busybox-static {version} with apt-get download"
    ));
    let work = dir.join("busybox.partial");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    run(Command::new("apt-get")
        .current_dir(&work)
        .args(["download", "-qq", &format!("busybox-static={version}")])
        .stdin(Stdio::null()))?;
    run(Command::new("sh")
        .current_dir(&work)
        .args(["-c", "dpkg-deb -x busybox-static_*.deb root"]))?;
    std::fs::rename(work.join("root/bin/busybox"), cached(&version))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(cached(&version))
}

/// A minimal Debian rootfs with python3, as `rootfs.tar` in a folder that is
/// the python image's build context. Made once with debootstrap from the
/// mirror apt already uses, cached by suite, variant and package list.
fn debian_rootfs(paths: &Paths) -> Result<PathBuf> {
    let key = format!(
        "debian-{DEBIAN_SUITE}-{DEBIAN_VARIANT}-{}",
        DEBIAN_PACKAGES.join("+")
    );
    let dir = paths.cache.join("rootfs").join(&key);
    if dir.join("rootfs.tar").is_file() {
        return Ok(dir);
    }
    apt_install(&["debootstrap"])?;
    let mirror = debian_mirror()?;
    let started = Instant::now();
    step(format!(
        "debootstrap {DEBIAN_SUITE} ({DEBIAN_VARIANT}, {}) from {mirror} (first time only, about a minute)",
        DEBIAN_PACKAGES.join(" ")
    ));
    let partial = paths.cache.join("rootfs").join(format!("{key}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    let target = partial.join("root");
    std::fs::create_dir_all(&target)?;
    let result = run(Command::new("debootstrap")
        .arg(format!("--variant={DEBIAN_VARIANT}"))
        .arg(format!("--include={}", DEBIAN_PACKAGES.join(",")))
        .args(["--components=main", DEBIAN_SUITE])
        .arg(&target)
        .arg(&mirror)
        .stdin(Stdio::null())
        .stdout(Stdio::null()));
    // debootstrap mounts /proc and /sys into the target while it installs;
    // a failed run can leave them behind, and deleting the folder would then
    // reach into the host's /proc and /sys.
    for m in ["proc", "sys"] {
        let p = target.join(m);
        if succeeds(Command::new("mountpoint").arg("-q").arg(&p)) {
            let _ = run(Command::new("umount").arg("-l").arg(&p));
        }
    }
    result.with_context(|| {
        format!(
            "debootstrap failed; its log: {}",
            target.join("debootstrap/debootstrap.log").display()
        )
    })?;
    // Package lists and downloaded .debs only make the image bigger.
    for junk in [
        "var/cache/apt/archives",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
    ] {
        let p = target.join(junk);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
    }
    write(&target.join("etc/hostname"), "trainer\n")?;
    run(Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "-C"])
        .arg(&target)
        .arg("-cf")
        .arg(partial.join("rootfs.tar"))
        .arg("."))?;
    std::fs::remove_dir_all(&target)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&partial, &dir)?;
    step(format!(
        "rootfs {key} cached in {:.0}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(dir)
}

/// Names the Debian mirror when apt's configuration does not.
const MIRROR_ENV: &str = "TJO_DEBIAN_MIRROR";

/// The Debian mirror to debootstrap from: `TJO_DEBIAN_MIRROR`, else the one
/// apt is configured with for `DEBIAN_SUITE`, read as apt reads it
/// (`sources.list`, then `sources.list.d/*.list` and `*.sources` in name
/// order), so the rootfs comes from wherever this machine's packages do.
fn debian_mirror() -> Result<String> {
    if let Some(m) = std::env::var(MIRROR_ENV)
        .ok()
        .filter(|m| !m.trim().is_empty())
    {
        return Ok(m.trim().to_string());
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        let name = f.to_string_lossy();
        let found = if name.ends_with(".sources") {
            mirror_in_deb822(&text)
        } else if name.ends_with(".list") {
            mirror_in_one_line(&text)
        } else {
            // apt ignores any other name (`.disabled`, `.save`, ...).
            None
        };
        if let Some(m) = found {
            return Ok(m);
        }
    }
    bail!(
        "apt has no source for Debian {DEBIAN_SUITE} in /etc/apt/sources.list or \
         /etc/apt/sources.list.d/ (*.list, *.sources), so there is no mirror to \
         debootstrap the trainer image from: set {MIRROR_ENV} to a Debian mirror's URL \
         (the folder that holds dists/{DEBIAN_SUITE})"
    )
}

/// The first URI of an enabled deb822 stanza serving `DEBIAN_SUITE` itself
/// (not -security or -updates).
fn mirror_in_deb822(text: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (key, value) = l.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_string())
            })
        };
        let enabled = field("Enabled").is_none_or(|v| v != "no");
        let debs = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        if let (true, true, Some(uris), Some(suites)) =
            (enabled, debs, field("URIs"), field("Suites"))
        {
            if suites.split_whitespace().any(|s| s == DEBIAN_SUITE) {
                return uris.split_whitespace().next().map(str::to_string);
            }
        }
    }
    None
}

/// The one-line format: `deb [options] URI suite components...`.
fn mirror_in_one_line(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let l = match (l.find('['), l.find(']')) {
            (Some(a), Some(b)) if a < b => format!("{} {}", &l[..a], &l[b + 1..]),
            _ => l.to_string(),
        };
        let words: Vec<&str> = l.split_whitespace().collect();
        (words.first() == Some(&"deb") && words.get(2) == Some(&DEBIAN_SUITE))
            .then(|| words[1].to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_own_base_images_are_loaded() {
        let cf =
            "# c\nFROM --platform=linux/amd64 localhost/tjo-python:dev AS base\nFROM scratch\n";
        assert_eq!(
            local_bases(cf),
            vec!["localhost/tjo-python:dev".to_string()]
        );
        assert!(local_bases("FROM docker.io/library/debian\n").is_empty());
    }

    #[test]
    fn the_mirror_is_read_from_either_sources_format() {
        let deb822 = "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n\n\
                      Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n\
                      Types: deb\nEnabled: no\nURIs: http://off.example/debian\nSuites: bookworm\n\n\
                      Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n";
        assert_eq!(
            mirror_in_deb822(deb822).as_deref(),
            Some("http://mirror.example/debian")
        );
        let classic = "deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n";
        assert_eq!(
            mirror_in_one_line(classic).as_deref(),
            Some("http://m.example/debian")
        );
        assert_eq!(
            mirror_in_one_line("deb http://x bookworm-security main\n"),
            None
        );
        assert_eq!(
            mirror_in_deb822("Types: deb\nURIs: http://x\nSuites: nodistro\n"),
            None
        );
    }
}
