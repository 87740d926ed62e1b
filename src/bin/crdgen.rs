//! Prints the TrainingJob CRD; `cargo xtask crd` writes it to crds/.
fn main() {
    print!("{}", trainingjob_operator::crd::yaml());
}
