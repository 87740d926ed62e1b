//! A soak job's final line, the proof that no work was lost: the trainer
//! prints `final step N loss L weights_sha256 H`, and the soak compares it
//! with an uninterrupted run's. A fault can delete the pod after its
//! trainer finished (a drain evicts Succeeded pods too), and its log with
//! it; the final checkpoint on the volume still holds the weights, so the
//! line is rebuilt from there: the step and the weights' hash, not the loss.

use crate::util::output;
use std::path::Path;
use std::process::Command;

const FROM_CHECKPOINT: &str = "checkpoint step";

/// `checkpoint step N weights_sha256 H` from the job's step-N checkpoint
/// under `volume` (the claim's hostPath), in either layout the example
/// trainer writes: one directory, or a `rank-R/` part per rank.
pub fn from_checkpoint(volume: &Path, steps: u64) -> Option<String> {
    let step_dir = format!("step-{steps}");
    let dirs = std::fs::read_dir(volume).ok()?;
    let candidates = dirs
        .flatten()
        .map(|d| d.path().join(&step_dir))
        .chain([volume.join(&step_dir)]);
    let weights = candidates
        .flat_map(|d| [d.join("weights.bin"), d.join("rank-00000/weights.bin")])
        .find(|p| p.is_file())?;
    let sum = output(Command::new("sha256sum").arg(&weights)).ok()?;
    let hash = sum.split_whitespace().next()?;
    Some(format!("{FROM_CHECKPOINT} {steps} weights_sha256 {hash}"))
}

/// Whether what the soak found equals the uninterrupted run's line: the
/// whole line, or from a checkpoint, its step and weights' hash.
pub fn matches(got: Option<&str>, want: Option<&str>) -> bool {
    let (Some(got), Some(want)) = (got, want) else {
        return false;
    };
    if !got.starts_with(FROM_CHECKPOINT) {
        return got == want;
    }
    let field = |line: &str, key: &str| {
        let mut words = line.split_whitespace();
        words.by_ref().find(|w| *w == key)?;
        words.next().map(str::to_string)
    };
    let same = |key| field(got, key).is_some() && field(got, key) == field(want, key);
    same("step") && same("weights_sha256")
}

#[cfg(test)]
mod tests {
    use super::*;

    const WANT: &str = "final step 20 loss 0.5 weights_sha256 \
        ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn volume(layout: &str) -> std::path::PathBuf {
        let v = std::env::temp_dir().join(format!("tjo-final-{layout}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&v);
        let dir = v.join("job/step-20").join(layout);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("weights.bin"), "abc").unwrap();
        v
    }

    #[test]
    fn a_final_checkpoint_stands_for_a_log_that_is_gone() {
        for layout in ["", "rank-00000"] {
            let v = volume(layout);
            let line = from_checkpoint(&v, 20).unwrap();
            assert!(matches(Some(&line), Some(WANT)), "{line}");
            assert!(from_checkpoint(&v, 40).is_none());
            let _ = std::fs::remove_dir_all(&v);
        }
    }

    #[test]
    fn other_weights_or_steps_do_not_match() {
        let wrong_hash = format!("{FROM_CHECKPOINT} 20 weights_sha256 00");
        assert!(!matches(Some(&wrong_hash), Some(WANT)));
        let wrong_step = WANT
            .replace("step 20", "step 19")
            .replace("final ", "checkpoint ");
        assert!(!matches(Some(&wrong_step), Some(WANT)));
        assert!(!matches(None, Some(WANT)));
        assert!(!matches(Some("final step 20 loss 0.6"), Some(WANT)));
        assert!(matches(Some(WANT), Some(WANT)));
    }
}
