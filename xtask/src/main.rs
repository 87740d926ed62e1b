//! Developer commands: `cargo xtask <command>`. See the README.

mod audit;
mod bench;
mod binaries;
mod containerd;
mod controlplane;
mod daemon;
mod demo;
mod disrupt;
mod faults;
mod helm;
mod images;
mod jobset;
mod kueue;
mod lifetimes;
mod node;
mod operators;
mod peers;
mod peers_manifests;
mod peers_report;
mod plot;
mod podlogs;
mod release;
mod scale;
mod soak;
mod soak_final;
mod soak_kueue;
mod soak_report;
mod test;
mod trainers;
mod util;
mod webhooks;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "trainingjob-operator developer commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A real local cluster: etcd, control plane and a kubelet on this machine.
    Cluster {
        #[command(subcommand)]
        action: ClusterCmd,
    },
    /// Disrupt the local node, for the node-loss tests.
    Node {
        #[command(subcommand)]
        action: NodeCmd,
    },
    /// Build the project's images offline with buildah and import them into
    /// containerd. With --push or --oci-archive: the operator's image only,
    /// for a real cluster, and no local cluster is needed.
    Images {
        /// Push the operator's image to REGISTRY/REPO[:TAG] (tag default:
        /// the chart's appVersion), with the credentials of `buildah login`.
        #[arg(long, value_name = "REGISTRY/REPO[:TAG]")]
        push: Option<String>,
        /// Write the operator's image to this OCI archive, named as --push
        /// says or else as the chart's default image.
        #[arg(long, value_name = "PATH")]
        oci_archive: Option<std::path::PathBuf>,
    },
    /// Write what a platform team ships into --out: the operator's image as
    /// an OCI archive and the chart packaged by `helm package`.
    Release {
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
        /// The image's name in the archive (default: the chart's own,
        /// tagged with its appVersion).
        #[arg(long, value_name = "REGISTRY/REPO[:TAG]")]
        image: Option<String>,
    },
    /// Regenerate crds/ from the Rust types.
    Crd,
    /// The pinned helm (built on first use) against the local cluster, e.g.
    /// `cargo xtask helm -- list -A`; without arguments, print its path.
    /// `--sync-crd` copies crds/trainingjob.yaml into the chart.
    Helm {
        #[arg(long)]
        sync_crd: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The README's test command: lint, unit tests, then tests against the real cluster.
    Test,
    /// The README's main command: the demo on the local cluster.
    Demo,
    /// Ten TrainingJobs on the local cluster under a seeded mix of every
    /// fault (preemptions by each route, operator SIGKILLs, restarts of the
    /// API server, etcd, containerd and the kubelet), then checks that
    /// nothing was lost. A failing seed prints its schedule.
    Soak {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How long faults are injected; the jobs then run to their end.
        #[arg(long, default_value_t = 60.0)]
        minutes: f64,
    },
    /// Print timings measured on the local cluster.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Time from an attempt's last pod gone to the next attempt's pods created.
    Resume {
        #[arg(long, default_value_t = 30)]
        rounds: u32,
    },
    /// The operator's cost at N jobs of 1 to 8 ranks on kwok nodes.
    Scale {
        #[arg(long, default_value_t = 1000)]
        jobs: u32,
        /// Which controllers to load, one after the other (default: all).
        #[arg(long, value_enum, num_args = 1..)]
        system: Vec<scale::System>,
    },
    /// The same trainer and preemptions under a Job, a JobSet and a TrainingJob.
    Peers {
        /// Scenario (a) only, shorter, two disruptions: what `cargo xtask test` runs.
        #[arg(long)]
        quick: bool,
        /// Seeds the schedule of disruptions (kinds, gaps, ranks).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Stop the kubelet, as if the node stopped answering.
    Stop {
        /// Kill every container too, as if the VM were gone.
        #[arg(long)]
        kill: bool,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Build what is missing and start everything; a no-op when it is already up.
    Up {
        /// Also start kwok with this many fake nodes (for scale benchmarks).
        #[arg(long, default_value_t = 0)]
        fake_nodes: u32,
        /// Control plane only, no kubelet.
        #[arg(long)]
        no_node: bool,
    },
    /// Stop every process and container, unmount what they mounted.
    Down,
    /// Say what is running.
    Status,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let paths = util::Paths::new()?;
    match cli.command {
        Cmd::Node {
            action: NodeCmd::Stop { kill },
        } => node::stop(&paths, kill),
        Cmd::Cluster { action } => match action {
            ClusterCmd::Up {
                fake_nodes,
                no_node,
            } => {
                cluster_up(&paths, no_node)?;
                if fake_nodes > 0 {
                    node::fake_nodes(&paths, fake_nodes)?;
                }
                controlplane::print_usage(&paths);
                Ok(())
            }
            ClusterCmd::Down => {
                jobset::down(&paths)?;
                kueue::down(&paths)?;
                node::down(&paths)?;
                controlplane::down(&paths)
            }
            ClusterCmd::Status => {
                let cp = controlplane::status(&paths)?;
                let n = node::status(&paths)?;
                kueue::status(&paths);
                jobset::status(&paths);
                if cp && n {
                    Ok(())
                } else {
                    std::process::exit(3)
                }
            }
        },
        Cmd::Images {
            push: None,
            oci_archive: None,
        } => images::build_and_import(&paths),
        Cmd::Images { push, oci_archive } => {
            let image = match &push {
                Some(r) => release::with_default_tag(&paths, r)?,
                None => release::chart_image(&paths)?,
            };
            images::export_operator(&paths, &image, oci_archive.as_deref(), push.is_some())
        }
        Cmd::Release { out, image } => release::release(&paths, &out, image.as_deref()),
        Cmd::Crd => test::regenerate_crd(&paths),
        Cmd::Helm { sync_crd, args } => {
            if sync_crd {
                helm::sync_crd(&paths)?;
            }
            helm::run_helm(&paths, &args)
        }
        Cmd::Test => test::run_all(&paths),
        Cmd::Demo => demo::run_demo(&paths),
        Cmd::Soak { seed, minutes } => soak::run(&paths, seed, minutes),
        Cmd::Bench { what } => match what {
            BenchCmd::Resume { rounds } => bench::resume(&paths, rounds),
            BenchCmd::Scale { jobs, system } => {
                let all = [
                    scale::System::Trainingjob,
                    scale::System::Jobset,
                    scale::System::Job,
                ];
                scale::scale(&paths, jobs, if system.is_empty() { &all } else { &system })
            }
            BenchCmd::Peers { quick, seed } => peers::run(&paths, quick, seed),
        },
    }
}

/// The control plane, then (unless `no_node`) the node, then Kueue and
/// JobSet, which run against the control plane (see kueue.rs, jobset.rs).
pub fn cluster_up(paths: &util::Paths, no_node: bool) -> Result<()> {
    controlplane::up(paths)?;
    if !no_node {
        node::up(paths)?;
    }
    kueue::up(paths)?;
    jobset::up(paths)
}
