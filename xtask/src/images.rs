//! The project's images, built offline with buildah and imported into containerd.

use crate::util::Paths;
use anyhow::Result;

pub fn build_and_import(_paths: &Paths) -> Result<()> {
    anyhow::bail!("images are not implemented yet")
}
