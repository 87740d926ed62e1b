//! The TrainingJob API as a user meets it through kubectl, against the real
//! API server: examples apply, bad specs are refused with a message that says
//! what to change, `kubectl explain` and `kubectl get` show our docs and columns.

mod common;

use common::{kubectl, kubectl_ok, stderr, TempNamespace};
use std::fs;

fn yaml_files(dir: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = fs::read_dir(common::root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn every_example_is_accepted_by_kubectl_apply() {
    let ns = TempNamespace::new("examples");
    let examples = yaml_files("examples");
    assert!(!examples.is_empty(), "examples/ has no manifests");
    for file in examples {
        let out = kubectl(&["apply", "-n", &ns.name, "-f", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{} was refused: {}",
            file.display(),
            stderr(&out)
        );
    }
    let names = kubectl_ok(&["get", "tj", "-n", &ns.name, "-o", "name"]);
    assert!(
        names.contains("trainingjob.trainingjob.dev/quickstart"),
        "{names}"
    );
}

/// tests/valid/ holds specs that come close to a refusal without earning
/// one (a 63-character name with one rank, `bash train.sh -c cfg`, `/tjx`):
/// the admission rules must not refuse what the operator can run.
#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn specs_near_a_rule_are_accepted() {
    let ns = TempNamespace::new("valid");
    let files = yaml_files("tests/valid");
    assert!(!files.is_empty(), "tests/valid/ has no manifests");
    let refused: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let out = kubectl(&["apply", "-n", &ns.name, "-f", file.to_str().unwrap()]);
            (!out.status.success()).then(|| format!("{}: {}", file.display(), stderr(&out)))
        })
        .collect();
    assert!(refused.is_empty(), "{}", refused.join("\n\n"));
}

/// Each file in tests/invalid/ names, in a `# expect:` line, what the API
/// server must say when it refuses it. Together they cover every class of
/// spec the schema and its CEL rules refuse (names, shell form, quantities,
/// reserved paths, names and env, bounds, unknown fields).
#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn invalid_specs_are_refused_with_a_message_that_says_what_to_change() {
    let ns = TempNamespace::new("invalid");
    let files = yaml_files("tests/invalid");
    assert!(files.len() >= 60, "only {} invalid manifests", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", file.display()));
        let out = kubectl(&["apply", "-n", &ns.name, "-f", file.to_str().unwrap()]);
        let err = stderr(&out);
        if out.status.success() {
            failures.push(format!("{}: accepted", file.display()));
        } else if !err.contains(expect) {
            failures.push(format!(
                "{}: refused, but not with {expect:?}:\n{err}",
                file.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Refused means nothing was stored.
    let left = kubectl_ok(&["get", "tj", "-n", &ns.name, "-o", "name"]);
    assert_eq!(left.trim(), "", "refused specs left objects behind");
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn kubectl_explain_prints_the_field_docs() {
    let out = kubectl_ok(&["explain", "trainingjob.spec.checkpoint"]);
    for doc in [
        "Where checkpoints live.",
        "claimName",
        "Name of a PersistentVolumeClaim in the job's namespace",
        "mountPath",
        "sizeHint",
        "until a real save has been measured",
    ] {
        assert!(out.contains(doc), "`kubectl explain` lacks {doc:?}:\n{out}");
    }
    let out = kubectl_ok(&["explain", "tj.spec.preemption.noticeSeconds"]);
    assert!(
        out.contains("GKE 15, EKS and Karpenter 120, AKS 30"),
        "{out}"
    );
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn kubectl_get_tj_shows_the_printer_columns() {
    let ns = TempNamespace::new("columns");
    let quickstart = common::root().join("examples/quickstart.yaml");
    kubectl_ok(&["apply", "-n", &ns.name, "-f", quickstart.to_str().unwrap()]);
    // Status is the operator's to write; here the test plays the operator
    // so the columns have something to show.
    kubectl_ok(&[
        "patch",
        "tj",
        "quickstart",
        "-n",
        &ns.name,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running","attempt":2,"preemptions":1,"gracePeriodSeconds":27,
            "lastCheckpoint":{"step":1200,"path":"/checkpoints/step-1200"},
            "conditions":[{"type":"Ready","status":"True","reason":"Running","message":"all ranks running",
                           "lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#,
    ]);
    let out = kubectl_ok(&["get", "tj", "-n", &ns.name]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "PHASE",
            "ATTEMPT",
            "PREEMPTIONS",
            "STEP",
            "GRACE",
            "AGE"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..7],
        ["quickstart", "True", "Running", "2", "1", "1200", "27"]
    );
}

/// The operator's own checks (for objects stored before a rule existed)
/// agree with admission on every manifest they cover: each invalid one of
/// their classes has a problem, no valid one has any.
#[test]
fn the_operators_checks_agree_with_admission() {
    use trainingjob_operator::api::{checks, TrainingJob};
    let parse = |file: &std::path::Path| -> TrainingJob {
        serde_yaml::from_str(&fs::read_to_string(file).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    };
    let covered = [
        "name-",
        "shell-form",
        "dollar",
        "mount-",
        "checkpoint-mount-",
        "volume-name",
        "container-name",
        "init-container-name",
        "env-",
    ];
    for file in yaml_files("tests/invalid") {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        let mine = covered.iter().any(|p| stem.starts_with(p)) && !stem.contains("relative");
        if mine && !stem.contains("dotdot") {
            assert!(
                !checks::problems(&parse(&file)).is_empty(),
                "{stem} passes the operator's checks"
            );
        }
    }
    for file in yaml_files("tests/valid")
        .iter()
        .chain(&yaml_files("examples"))
    {
        let text = fs::read_to_string(file).unwrap();
        for doc in text
            .split("\n---\n")
            .filter(|d| d.contains("kind: TrainingJob"))
        {
            let job: TrainingJob = serde_yaml::from_str(doc).unwrap();
            assert_eq!(
                checks::problems(&job),
                Vec::<String>::new(),
                "{}",
                file.display()
            );
        }
    }
}
