//! The committed CRD must be what the Rust types generate: a stale
//! crds/trainingjob.yaml would install a schema the controller doesn't speak.

use trainingjob_operator::crd;

#[test]
fn committed_crd_matches_the_rust_types() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(crd::CRD_FILE);
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        committed == crd::yaml(),
        "{} is stale: run `cargo xtask crd` and commit the result",
        crd::CRD_FILE
    );
}
