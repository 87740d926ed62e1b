//! Finding the checkpoint to resume from.
//!
//! A checkpoint counts only if it reached its final name by an atomic rename
//! and, where it marks itself complete, the mark is there and agrees with the
//! files. Layouts recognised (see docs/checkpoint-contract.md):
//!
//! * `step-<N>.ckpt`: one file, complete by virtue of its name (it was renamed
//!   from `step-<N>.ckpt.tmp`).
//! * `step-<N>/` with `MANIFEST.json` written last, listing every file and its
//!   size (optionally sha256). Multi-rank saves list every rank's files.
//! * PyTorch Distributed Checkpoint: any `<prefix>-<N>` / `<prefix>_<N>`
//!   directory holding `.metadata`, which DCP writes after all ranks' data.
//! * Hugging Face Trainer: `checkpoint-<N>/` (staged as `tmp-checkpoint-<N>`
//!   by some versions), complete once `trainer_state.json` parses as JSON:
//!   the Trainer writes it after the model and optimizer, and writes it in
//!   place, so a save cut short can leave it empty or torn. Transformers'
//!   JIT checkpointing (`enable_jit_checkpoint`) also puts
//!   `checkpoint-is-incomplete.txt` into the directory before saving and
//!   removes it after; while it is there the checkpoint is not complete,
//!   whatever else the directory holds.
//!
//! Temporaries are `*.tmp` and `tmp-checkpoint-*`.

use crate::report::Skipped;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "MANIFEST.json";
pub const DCP_METADATA: &str = ".metadata";
pub const HF_STATE: &str = "trainer_state.json";
/// Transformers' `trainer_jit_checkpoint.py` sentinel.
pub const HF_INCOMPLETE: &str = "checkpoint-is-incomplete.txt";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `step-<N>.ckpt`
    StepFile,
    /// `step-<N>`
    StepDir,
    /// `checkpoint-<N>`
    HfDir,
    /// `<prefix>-<N>` or `<prefix>_<N>`: counts only as DCP (with `.metadata`).
    OtherDir,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    Final {
        step: u64,
        naming: Naming,
    },
    /// A temporary; `final_name` is what it becomes when the save completes.
    Temp {
        final_name: String,
    },
}

fn parse_step(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Classifies a directory entry's name. Pure, so the rules can be tested
/// without a filesystem.
pub fn parse_name(name: &str) -> Option<Name> {
    if let Some(base) = name.strip_suffix(".tmp") {
        if base.is_empty() {
            return None;
        }
        return Some(Name::Temp {
            final_name: base.to_string(),
        });
    }
    if let Some(n) = name.strip_prefix("tmp-checkpoint-") {
        parse_step(n)?;
        return Some(Name::Temp {
            final_name: format!("checkpoint-{n}"),
        });
    }
    if let Some(n) = name.strip_prefix("step-") {
        if let Some(n) = n.strip_suffix(".ckpt") {
            return parse_step(n).map(|step| Name::Final {
                step,
                naming: Naming::StepFile,
            });
        }
        return parse_step(n).map(|step| Name::Final {
            step,
            naming: Naming::StepDir,
        });
    }
    if let Some(n) = name.strip_prefix("checkpoint-") {
        return parse_step(n).map(|step| Name::Final {
            step,
            naming: Naming::HfDir,
        });
    }
    // Generic DCP names: `global_step_100`, `iter-100`, `ckpt_100`.
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 || digits == name.len() {
        return None;
    }
    let (prefix, n) = name.split_at(name.len() - digits);
    let sep_ok = prefix.ends_with('-') || prefix.ends_with('_');
    let ident_ok = prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !prefix.starts_with('.');
    (sep_ok && ident_ok)
        .then(|| parse_step(n))
        .flatten()
        .map(|step| Name::Final {
            step,
            naming: Naming::OtherDir,
        })
}

/// Files whose writing (or, for [`HF_INCOMPLETE`], removal) can make a
/// checkpoint directory complete.
pub fn is_marker(file: &str) -> bool {
    matches!(file, MANIFEST | DCP_METADATA | HF_STATE | HF_INCOMPLETE)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub step: u64,
    pub naming: Naming,
    pub path: PathBuf,
    pub is_dir: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Complete,
    /// Not a checkpoint at all (a `logs_2` directory): ignored, not reported.
    NotCheckpoint,
    /// Looks like a checkpoint but is torn or corrupt: skipped and reported.
    Bad(String),
}

/// Newest first; among equal steps, a fixed order so that the choice does not
/// depend on readdir order.
pub fn order(cands: &mut [Candidate]) {
    cands.sort_by(|a, b| b.step.cmp(&a.step).then_with(|| a.path.cmp(&b.path)));
}

/// Walks candidates newest first and returns the first complete one, plus
/// every newer one that was skipped and why. Older candidates are not checked
/// at all, which matters when checks hash gigabytes.
pub fn select(
    mut cands: Vec<Candidate>,
    mut check: impl FnMut(&Candidate) -> Verdict,
) -> (Option<Candidate>, Vec<Skipped>) {
    order(&mut cands);
    let mut skipped = Vec::new();
    for c in cands {
        match check(&c) {
            Verdict::Complete => return (Some(c), skipped),
            Verdict::NotCheckpoint => {}
            Verdict::Bad(reason) => skipped.push(Skipped {
                path: c.path.to_string_lossy().into_owned(),
                reason,
            }),
        }
    }
    (None, skipped)
}

#[derive(Debug, Default)]
pub struct Scan {
    pub candidates: Vec<Candidate>,
    pub temporaries: Vec<PathBuf>,
}

/// Lists `dir` (not recursively) into candidates and temporaries.
pub fn scan(dir: &Path) -> io::Result<Scan> {
    let mut out = Scan::default();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Ok(ft) = e.file_type() else { continue };
        match parse_name(name) {
            Some(Name::Temp { .. }) => out.temporaries.push(e.path()),
            Some(Name::Final { step, naming }) => {
                // A symlink (e.g. a `latest` pointer someone named step-9) is
                // followed: what matters is what it points at.
                let is_dir = if ft.is_symlink() {
                    fs::metadata(e.path()).map(|m| m.is_dir()).unwrap_or(false)
                } else {
                    ft.is_dir()
                };
                let wants_dir = naming != Naming::StepFile;
                if is_dir == wants_dir {
                    out.candidates.push(Candidate {
                        step,
                        naming,
                        path: e.path(),
                        is_dir,
                    });
                }
            }
            None => {}
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    step: Option<u64>,
    files: Vec<ManifestFile>,
}

#[derive(Deserialize)]
struct ManifestFile {
    path: String,
    bytes: u64,
    #[serde(default)]
    sha256: Option<String>,
}

/// Decides whether a candidate is a complete checkpoint. `verify_hashes`
/// reads every byte, so callers only ask for it for the one they pick.
pub fn check(c: &Candidate, verify_hashes: bool) -> Verdict {
    if !c.is_dir {
        return match fs::metadata(&c.path) {
            Ok(m) if m.len() > 0 => Verdict::Complete,
            Ok(_) => Verdict::Bad("empty file".into()),
            Err(e) => Verdict::Bad(format!("unreadable: {e}")),
        };
    }
    if c.path.join(HF_INCOMPLETE).exists() {
        return Verdict::Bad(format!("{HF_INCOMPLETE} present: save did not finish"));
    }
    let manifest = c.path.join(MANIFEST);
    match fs::read(&manifest) {
        Ok(bytes) => return check_manifest(&c.path, c.step, &bytes, verify_hashes),
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Verdict::Bad(format!("{MANIFEST} unreadable: {e}"))
        }
        Err(_) => {}
    }
    if c.path.join(DCP_METADATA).is_file() {
        return Verdict::Complete;
    }
    match c.naming {
        Naming::HfDir => check_hf_state(&c.path.join(HF_STATE)),
        Naming::StepDir => Verdict::Bad(format!(
            "no {MANIFEST} (or DCP {DCP_METADATA}): save did not finish"
        )),
        Naming::OtherDir | Naming::StepFile => Verdict::NotCheckpoint,
    }
}

/// The Trainer writes `trainer_state.json` last and in place: only a whole
/// JSON object means it finished. Values are skipped, not kept: its log
/// history can be large.
fn check_hf_state(p: &Path) -> Verdict {
    let f = match fs::File::open(p) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Verdict::Bad(format!("no {HF_STATE}: save did not finish"))
        }
        Err(e) => return Verdict::Bad(format!("{HF_STATE} unreadable: {e}")),
    };
    let r = io::BufReader::new(f);
    match serde_json::from_reader::<_, HashMap<String, IgnoredAny>>(r) {
        Ok(_) => Verdict::Complete,
        Err(e) => Verdict::Bad(format!(
            "{HF_STATE} is not a whole JSON object ({e}): save did not finish"
        )),
    }
}

fn check_manifest(dir: &Path, step: u64, bytes: &[u8], verify_hashes: bool) -> Verdict {
    let m: Manifest = match serde_json::from_slice(bytes) {
        Ok(m) => m,
        Err(e) => return Verdict::Bad(format!("{MANIFEST} is not valid: {e}")),
    };
    if let Some(s) = m.step {
        if s != step {
            return Verdict::Bad(format!("{MANIFEST} says step {s}, name says {step}"));
        }
    }
    if m.files.is_empty() {
        return Verdict::Bad(format!("{MANIFEST} lists no files"));
    }
    for f in &m.files {
        let rel = Path::new(&f.path);
        let escapes = rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)));
        if escapes || f.path.is_empty() {
            return Verdict::Bad(format!(
                "{MANIFEST} lists a path outside the checkpoint: {}",
                f.path
            ));
        }
        let p = dir.join(rel);
        let meta = match fs::metadata(&p) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Verdict::Bad(format!("{} is not a file", f.path)),
            Err(_) => {
                return Verdict::Bad(format!("{MANIFEST} lists {}, which is missing", f.path))
            }
        };
        if meta.len() != f.bytes {
            return Verdict::Bad(format!(
                "{MANIFEST} lists {} with {} bytes, found {}",
                f.path,
                f.bytes,
                meta.len()
            ));
        }
        if verify_hashes {
            if let Some(want) = &f.sha256 {
                match sha256_file(&p) {
                    Ok(got) if got.eq_ignore_ascii_case(want) => {}
                    Ok(_) => {
                        return Verdict::Bad(format!(
                            "sha256 of {} does not match {MANIFEST}",
                            f.path
                        ))
                    }
                    Err(e) => return Verdict::Bad(format!("{} unreadable: {e}", f.path)),
                }
            }
        }
    }
    Verdict::Complete
}

pub fn sha256_file(p: &Path) -> io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Total size of a file or a directory tree (symlinks not followed).
pub fn total_bytes(p: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(p) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    let Ok(rd) = fs::read_dir(p) else { return 0 };
    rd.flatten().map(|e| total_bytes(&e.path())).sum()
}

pub fn mtime_unix_ms(p: &Path) -> u64 {
    fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Deletes temporaries left by writers that are gone. Callers must be sure no
/// writer is alive: see `Config::cleans_temporaries`.
pub fn remove_temporaries(paths: &[PathBuf]) -> (u32, Vec<Skipped>) {
    let mut removed = 0;
    let mut failed = Vec::new();
    for p in paths {
        let r = match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(p),
            Ok(_) => fs::remove_file(p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => removed += 1,
            Err(e) => failed.push(Skipped {
                path: p.to_string_lossy().into_owned(),
                reason: format!("temporary not removed: {e}"),
            }),
        }
    }
    (removed, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fin(step: u64, naming: Naming) -> Option<Name> {
        Some(Name::Final { step, naming })
    }

    fn tmp(s: &str) -> Option<Name> {
        Some(Name::Temp {
            final_name: s.into(),
        })
    }

    #[test]
    fn names() {
        assert_eq!(parse_name("step-12"), fin(12, Naming::StepDir));
        assert_eq!(parse_name("step-12.ckpt"), fin(12, Naming::StepFile));
        assert_eq!(parse_name("step-12.ckpt.tmp"), tmp("step-12.ckpt"));
        assert_eq!(parse_name("step-12.tmp"), tmp("step-12"));
        assert_eq!(parse_name("checkpoint-500"), fin(500, Naming::HfDir));
        assert_eq!(parse_name("tmp-checkpoint-500"), tmp("checkpoint-500"));
        assert_eq!(parse_name("global_step_7"), fin(7, Naming::OtherDir));
        assert_eq!(parse_name("iter-0007"), fin(7, Naming::OtherDir));
        assert_eq!(parse_name("step-"), None);
        assert_eq!(parse_name("step-1x"), None);
        assert_eq!(parse_name("step-+1"), None);
        assert_eq!(parse_name("12345"), None);
        assert_eq!(parse_name("model.bin"), None);
        assert_eq!(parse_name(".hidden_3"), None);
        assert_eq!(parse_name("v2"), None);
        assert_eq!(parse_name(".tmp"), None);
        assert_eq!(parse_name("step-99999999999999999999999"), None);
    }

    fn cand(step: u64, name: &str) -> Candidate {
        Candidate {
            step,
            naming: Naming::StepDir,
            path: PathBuf::from(name),
            is_dir: true,
        }
    }

    #[test]
    fn select_newest_complete_and_report_newer_bad_ones() {
        let cands = vec![
            cand(5, "a5"),
            cand(30, "a30"),
            cand(20, "a20"),
            cand(10, "a10"),
        ];
        let mut checked = Vec::new();
        let (got, skipped) = select(cands, |c| {
            checked.push(c.step);
            match c.step {
                30 => Verdict::Bad("torn".into()),
                20 => Verdict::NotCheckpoint,
                _ => Verdict::Complete,
            }
        });
        assert_eq!(got.unwrap().step, 10);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].path, "a30");
        assert_eq!(skipped[0].reason, "torn");
        // Step 5 was never examined: older checkpoints cost nothing.
        assert_eq!(checked, vec![30, 20, 10]);
    }

    #[test]
    fn select_nothing_complete() {
        let (got, skipped) = select(vec![cand(1, "x")], |_| Verdict::Bad("no".into()));
        assert!(got.is_none());
        assert_eq!(skipped.len(), 1);
        let (got, skipped) = select(vec![], |_| Verdict::Complete);
        assert!(got.is_none() && skipped.is_empty());
    }

    #[test]
    fn ties_break_by_path() {
        let (got, _) = select(vec![cand(3, "step-3.ckpt"), cand(3, "step-3")], |_| {
            Verdict::Complete
        });
        assert_eq!(got.unwrap().path, PathBuf::from("step-3"));
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "launcher-ut-{tag}-{}-{}",
            std::process::id(),
            crate::sys::now_unix_ms()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn manifest_checks_sizes_hashes_and_paths() {
        let d = tempdir("manifest");
        let c = d.join("step-4");
        fs::create_dir(&c).unwrap();
        fs::write(c.join("w.bin"), b"hello").unwrap();
        let sha = sha256_file(&c.join("w.bin")).unwrap();
        assert_eq!(
            sha,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let cand = Candidate {
            step: 4,
            naming: Naming::StepDir,
            path: c.clone(),
            is_dir: true,
        };
        let write = |m: &str| fs::write(c.join(MANIFEST), m).unwrap();

        assert!(matches!(check(&cand, true), Verdict::Bad(r) if r.contains("no MANIFEST")));
        write(r#"{"step":4,"files":[{"path":"w.bin","bytes":5}]}"#);
        assert_eq!(check(&cand, true), Verdict::Complete);
        write(&format!(
            r#"{{"files":[{{"path":"w.bin","bytes":5,"sha256":"{sha}"}}]}}"#
        ));
        assert_eq!(check(&cand, true), Verdict::Complete);
        write(&format!(
            r#"{{"files":[{{"path":"w.bin","bytes":5,"sha256":"{}"}}]}}"#,
            "0".repeat(64)
        ));
        assert!(matches!(check(&cand, true), Verdict::Bad(r) if r.contains("sha256")));
        assert_eq!(check(&cand, false), Verdict::Complete);
        write(r#"{"step":4,"files":[{"path":"w.bin","bytes":6}]}"#);
        assert!(matches!(check(&cand, true), Verdict::Bad(r) if r.contains("6 bytes, found 5")));
        write(r#"{"step":5,"files":[{"path":"w.bin","bytes":5}]}"#);
        assert!(matches!(check(&cand, true), Verdict::Bad(r) if r.contains("says step 5")));
        write(r#"{"files":[{"path":"../w.bin","bytes":5}]}"#);
        assert!(matches!(check(&cand, true), Verdict::Bad(r) if r.contains("outside")));
        write(r#"{"files":[{"path":"gone.bin","bytes":5}]}"#);
        assert!(matches!(check(&cand, true), Verdict::Bad(r) if r.contains("missing")));
        write(r#"{"files":[]}"#);
        assert!(matches!(check(&cand, true), Verdict::Bad(_)));
        write("{not json");
        assert!(matches!(check(&cand, true), Verdict::Bad(r) if r.contains("not valid")));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn hf_checkpoint_is_complete_only_with_whole_trainer_state_and_no_sentinel() {
        let d = tempdir("hf");
        let c = d.join("checkpoint-50");
        fs::create_dir(&c).unwrap();
        let cand = Candidate {
            step: 50,
            naming: Naming::HfDir,
            path: c.clone(),
            is_dir: true,
        };
        let bad = |why: &str| matches!(check(&cand, false), Verdict::Bad(r) if r.contains(why));
        assert!(bad("no trainer_state.json"));
        for torn in ["", "{\"global_step\": 50, \"log_hist", "[]", "0", "{} {"] {
            fs::write(c.join(HF_STATE), torn).unwrap();
            assert!(bad("not a whole JSON object"), "{torn:?} passed");
        }
        fs::write(
            c.join(HF_STATE),
            r#"{"global_step": 50, "log_history": [{"loss": 1.5}]} "#,
        )
        .unwrap();
        assert_eq!(check(&cand, false), Verdict::Complete);
        fs::write(c.join(HF_INCOMPLETE), "Checkpoint started at step 50").unwrap();
        assert!(bad(HF_INCOMPLETE));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn scan_sorts_out_layouts() {
        let d = tempdir("scan");
        for dir in [
            "step-1",
            "step-2.tmp",
            "tmp-checkpoint-3",
            "checkpoint-3",
            "logs_2",
        ] {
            fs::create_dir(d.join(dir)).unwrap();
        }
        for file in ["step-4.ckpt", "step-5.ckpt.tmp", "notes.txt", "step-6"] {
            fs::write(d.join(file), b"x").unwrap();
        }
        // A file named like a directory layout, and vice versa, are not candidates.
        fs::create_dir(d.join("step-7.ckpt")).unwrap();
        let s = scan(&d).unwrap();
        let mut names: Vec<_> = s
            .candidates
            .iter()
            .map(|c| c.path.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["checkpoint-3", "logs_2", "step-1", "step-4.ckpt"]);
        let mut tmps: Vec<_> = s
            .temporaries
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        tmps.sort();
        assert_eq!(tmps, ["step-2.tmp", "step-5.ckpt.tmp", "tmp-checkpoint-3"]);
        let (n, failed) = remove_temporaries(&s.temporaries);
        assert_eq!((n, failed.len()), (3, 0));
        assert!(scan(&d).unwrap().temporaries.is_empty());
        fs::remove_dir_all(&d).unwrap();
    }
}
