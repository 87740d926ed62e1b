//! The operator binary. The controller itself is the library's; this file
//! only parses the command line.

fn main() {
    let version = env!("CARGO_PKG_VERSION");
    match std::env::args().nth(1).as_deref() {
        Some("--version") | Some("version") => println!("trainingjob-operator {version}"),
        Some("crd") => print!("{}", trainingjob_operator::crd::yaml()),
        _ => {
            eprintln!(
                "trainingjob-operator {version}\n\nUSAGE:\n  trainingjob-operator crd        print the CRD\n  \
                 trainingjob-operator version    print the version"
            );
            std::process::exit(2);
        }
    }
}
