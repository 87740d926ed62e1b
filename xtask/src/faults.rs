//! The faults `cargo xtask soak` mixes, their seeded schedule, and how each
//! is done to the local cluster. A preemption goes only to settled jobs
//! (soak.rs), so that what is injected can be compared with what the
//! operator counted, reason by reason.

use crate::disrupt;
use crate::soak::{Soak, NODE, NS};
use crate::util::{output, run, step, wait_for, SplitMix};
use anyhow::{Context, Result};
use std::process::Stdio;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The Eviction API on one rank.
    Evict,
    /// `kubectl delete pod`, with the pod's grace.
    Delete,
    /// `--grace-period=0 --force`: no save is possible.
    ForceDelete,
    /// One rank of a two-rank job evicted while the other is saving.
    MidSave,
    /// `kubectl drain` of the node: every job.
    Drain,
    /// A pod of higher priority that needs all 8 GPUs: every GPU job.
    Preempt,
    /// The VM is gone: kubelet and containers killed, the Node deleted,
    /// the node back once the pods are collected.
    NodeLoss,
    /// Kueue evicts a queued job's workload for work of higher priority.
    Kueue,
    /// A rank evicted while no operator runs; they come back after it.
    EvictWhileOperatorsDown,
    /// SIGKILL of the leader; the standby takes the Lease.
    KillLeader,
    /// SIGKILL of both replicas at once.
    KillOperators,
    RestartApiserver,
    /// A two-rank job is stopping (one rank evicted) when the API server
    /// goes down.
    ApiserverWhileStopping,
    /// etcd restarted after a compaction at its head, with the API server
    /// down meanwhile: every watch resumes from a compacted revision (410).
    RestartEtcd,
    RestartContainerd,
    RestartKubelet,
}

use Fault::*;

impl Fault {
    pub const ALL: [Fault; 16] = [
        Evict,
        Delete,
        ForceDelete,
        MidSave,
        Drain,
        Preempt,
        NodeLoss,
        Kueue,
        EvictWhileOperatorsDown,
        KillLeader,
        KillOperators,
        RestartApiserver,
        ApiserverWhileStopping,
        RestartEtcd,
        RestartContainerd,
        RestartKubelet,
    ];

    /// How often each comes after the first pass: cheap ones more often.
    fn weight(self) -> u64 {
        match self {
            Evict | Delete | ForceDelete | MidSave | Preempt | KillLeader | RestartKubelet => 3,
            Drain | NodeLoss | RestartEtcd | RestartContainerd => 1,
            _ => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Evict => "Eviction API",
            Delete => "pod deletion",
            ForceDelete => "forced pod deletion",
            MidSave => "rank evicted while the other saves",
            Drain => "node drain",
            Preempt => "scheduler preemption",
            NodeLoss => "node lost",
            Kueue => "Kueue eviction",
            EvictWhileOperatorsDown => "eviction while no operator runs",
            KillLeader => "SIGKILL of the leader",
            KillOperators => "SIGKILL of both operators",
            RestartApiserver => "kube-apiserver restart",
            ApiserverWhileStopping => "kube-apiserver restart while a gang stops",
            RestartEtcd => "etcd compaction and restart",
            RestartContainerd => "containerd restart",
            RestartKubelet => "kubelet restart",
        }
    }

    /// The reason the operator must record for each job hit; None for a
    /// fault that must not preempt anything.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Evict | MidSave | Drain | EvictWhileOperatorsDown | ApiserverWhileStopping => {
                Some("EvictionByEvictionAPI")
            }
            Delete | ForceDelete => Some("PodDeleted"),
            Preempt => Some("PreemptionByScheduler"),
            NodeLoss => Some("DeletionByPodGC"),
            Kueue => Some("WorkloadEvictedDueToPreempted"),
            _ => None,
        }
    }

    /// Whether the trainer gets its grace period: a save that fits it
    /// must lose no step.
    pub fn graceful(self) -> bool {
        !matches!(self, ForceDelete | NodeLoss)
    }
}

/// One fault of the schedule, `gap` after the previous one ended.
#[derive(Clone, Debug)]
pub struct Planned {
    pub gap: Duration,
    pub fault: Fault,
    /// Picks the job and the rank.
    pub pick: u64,
}

/// Every fault once in a seeded order, then a seeded draw by weight, as
/// long as the soak lasts. A third of the gaps are under 3 s, so that a
/// fault often lands while the last one is still being recovered from.
pub struct Schedule {
    rng: SplitMix,
    first: Vec<Fault>,
}

impl Schedule {
    pub fn new(seed: u64) -> Self {
        let mut rng = SplitMix(seed);
        let mut first = Fault::ALL.to_vec();
        for i in (1..first.len()).rev() {
            first.swap(i, rng.below(i as u64 + 1) as usize);
        }
        first.reverse();
        Self { rng, first }
    }

    pub fn next(&mut self) -> Planned {
        let fault = self.first.pop().unwrap_or_else(|| self.draw());
        let gap = if self.rng.below(3) == 0 {
            self.rng.below(3)
        } else {
            3 + self.rng.below(18)
        };
        Planned {
            gap: Duration::from_secs(gap),
            fault,
            pick: self.rng.next(),
        }
    }

    fn draw(&mut self) -> Fault {
        let total: u64 = Fault::ALL.iter().map(|f| f.weight()).sum();
        let mut at = self.rng.below(total);
        for f in Fault::ALL {
            if at < f.weight() {
                return f;
            }
            at -= f.weight();
        }
        unreachable!("the draw is below the total weight")
    }
}

/// A fault as it was applied: seconds into the soak, and the jobs it
/// preempted. A skipped one found no settled job in time.
#[derive(Clone, Debug)]
pub struct Applied {
    pub fault: Fault,
    pub at: f64,
    pub hit: Vec<String>,
    pub skipped: bool,
}

/// Applies `fault`; returns the jobs it preempted (none for a fault of the
/// control plane), or None when it found nothing to apply to.
pub fn apply(s: &mut Soak, fault: Fault, pick: u64) -> Result<Option<Vec<String>>> {
    match fault {
        Evict | Delete | ForceDelete => preempt_one(s, fault, pick),
        MidSave => mid_save(s, pick),
        Drain => drain(s),
        Preempt => scheduler_preemption(s),
        NodeLoss => node_loss(s),
        Kueue => crate::soak_kueue::preempt(s, pick),
        EvictWhileOperatorsDown => evict_while_operators_down(s, pick),
        KillLeader => kill_leader(s).map(|()| Some(vec![])),
        KillOperators => {
            s.operators.kill(s.paths, &[0, 1])?;
            s.operators.restart(s.paths, &[0, 1])?;
            Ok(Some(vec![]))
        }
        RestartApiserver => restart_apiserver(s).map(|()| Some(vec![])),
        ApiserverWhileStopping => apiserver_while_stopping(s, pick),
        RestartEtcd => {
            crate::controlplane::restart_etcd_compacted(s.paths)?;
            Ok(Some(vec![]))
        }
        RestartContainerd | RestartKubelet => {
            let daemon = if fault == RestartKubelet {
                "kubelet"
            } else {
                "containerd"
            };
            crate::daemon::stop(s.paths, daemon, Duration::from_secs(20))?;
            crate::node::up(s.paths)?;
            Ok(Some(vec![]))
        }
    }
}

/// A settled job and the pod of one of its ranks, both chosen by `pick`.
fn target(
    s: &mut Soak,
    pick: u64,
    want: impl Fn(&crate::soak::Job) -> bool,
) -> Option<(usize, String)> {
    let j = s.pick_job(pick, want)?;
    let rank = ((pick >> 16) % u64::from(s.jobs[j].shape().ranks)) as u32;
    Some((j, s.pod_of_rank(j, rank)?))
}

fn preempt_one(s: &mut Soak, fault: Fault, pick: u64) -> Result<Option<Vec<String>>> {
    let Some((j, pod)) = target(s, pick, |_| true) else {
        return Ok(None);
    };
    let accepted = match fault {
        Evict => disrupt::evict(&&*s.k, NS, &pod)?,
        _ => {
            let mut cmd = (s.k)();
            cmd.args(["delete", "pod", "-n", NS, &pod, "--wait=false"]);
            if fault == ForceDelete {
                cmd.args(["--grace-period=0", "--force"]);
            }
            crate::util::succeeds(cmd.stderr(Stdio::null()))
        }
    };
    step(format!("  {} of {pod}", fault.name()));
    Ok(accepted.then(|| vec![s.jobs[j].name.clone()]))
}

/// Waits (up to a minute) until the saving rank has printed a step its
/// interval saves and not yet the line that says it saved, then evicts
/// the other rank.
fn mid_save(s: &mut Soak, pick: u64) -> Result<Option<Vec<String>>> {
    let want = |j: &crate::soak::Job| j.shape().ranks == 2 && j.shape().save_seconds >= 2.0;
    let Some(j) = s.pick_job(pick, want) else {
        return Ok(None);
    };
    let saver_rank = ((pick >> 16) % 2) as u32;
    let (Some(saver), Some(victim)) = (
        s.pod_of_rank(j, saver_rank),
        s.pod_of_rank(j, 1 - saver_rank),
    ) else {
        return Ok(None);
    };
    let every = s.jobs[j].shape().ckpt_every;
    let saving = wait_for("a periodic save in flight", Duration::from_secs(60), || {
        let tail = output((s.k)().args(["logs", "-n", NS, &saver, "-c", "trainer", "--tail=1"]))
            .unwrap_or_default();
        crate::peers::step_of(tail.trim()).is_some_and(|n| n > 0 && n % every == 0)
    });
    if saving.is_err() {
        eprintln!("  {saver} was not seen saving; evicting {victim} anyway");
    }
    step(format!("  {victim} evicted while {saver} saves"));
    let accepted = disrupt::evict(&&*s.k, NS, &victim)?;
    Ok(accepted.then(|| vec![s.jobs[j].name.clone()]))
}

fn drain(s: &mut Soak) -> Result<Option<Vec<String>>> {
    let Some(hit) = s.barrier(|_| true) else {
        return Ok(None);
    };
    let selector = format!("{}=1", crate::soak::LABEL);
    let drained = output((s.k)().args([
        "drain",
        NODE,
        "--pod-selector",
        &selector,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--force",
        "--timeout=300s",
    ]));
    run((s.k)().args(["uncordon", NODE]).stdout(Stdio::null()))?;
    drained.context("kubectl drain")?;
    Ok(Some(hit))
}

fn scheduler_preemption(s: &mut Soak) -> Result<Option<Vec<String>>> {
    let Some(hit) = s.barrier(|j| j.shape().gpu) else {
        return Ok(None);
    };
    disrupt::create_preemptor(&&*s.k, NS)?;
    disrupt::end_preemption(&&*s.k, NS, Instant::now() + Duration::from_secs(180));
    Ok(Some(hit))
}

fn node_loss(s: &mut Soak) -> Result<Option<Vec<String>>> {
    let Some(hit) = s.barrier(|_| true) else {
        return Ok(None);
    };
    crate::node::stop(s.paths, true)?;
    run((s.k)()
        .args(["delete", "node", NODE, "--wait=false"])
        .stdout(Stdio::null()))?;
    // Bring the node back only once its pods are collected: a node that
    // returns first finds its dead pods and fails them instead.
    wait_for(
        "the lost node's pods to be collected",
        Duration::from_secs(300),
        || {
            s.poll();
            !s.pods.iter().any(|p| p["spec"]["nodeName"] == NODE)
        },
    )
    .with_context(|| s.state())?;
    crate::node::up(s.paths)?;
    Ok(Some(hit))
}

fn evict_while_operators_down(s: &mut Soak, pick: u64) -> Result<Option<Vec<String>>> {
    let Some((j, pod)) = target(s, pick, |_| true) else {
        return Ok(None);
    };
    s.operators.kill(s.paths, &[0, 1])?;
    let accepted = disrupt::evict(&&*s.k, NS, &pod)?;
    step(format!("  {pod} evicted while no operator runs"));
    // Its trainer stops and saves with no operator; the pod object stays
    // until an operator releases its report finalizer.
    let gone = wait_for(
        "the evicted pod's trainer to end",
        Duration::from_secs(120),
        || {
            output((s.k)().args([
                "get",
                "pod",
                "-n",
                NS,
                &pod,
                "--ignore-not-found",
                "-o",
                "jsonpath={.status.phase}",
            ]))
            .is_ok_and(|p| matches!(p.trim(), "" | "Succeeded" | "Failed"))
        },
    );
    s.operators.restart(s.paths, &[0, 1])?;
    gone?;
    Ok(accepted.then(|| vec![s.jobs[j].name.clone()]))
}

/// The standby must take the Lease before the killed leader comes back:
/// restarted at once, under its old identity, it would simply renew.
fn kill_leader(s: &mut Soak) -> Result<()> {
    let leader = s.operators.leader(&&*s.k).unwrap_or(0);
    s.operators.kill(s.paths, &[leader])?;
    let k = s.k.clone();
    let taken = wait_for(
        "the standby to take the Lease",
        Duration::from_secs(90),
        || {
            // The standby may itself have exited (a lost Lease) meanwhile.
            s.operators.supervise_one(s.paths, 1 - leader);
            s.operators.leader(&&*k).is_some_and(|l| l != leader)
        },
    );
    s.operators.restart(s.paths, &[leader])?;
    taken.with_context(|| s.state())
}

fn restart_apiserver(s: &mut Soak) -> Result<()> {
    crate::daemon::stop(s.paths, "kube-apiserver", Duration::from_secs(20))?;
    crate::controlplane::up(s.paths)
}

fn apiserver_while_stopping(s: &mut Soak, pick: u64) -> Result<Option<Vec<String>>> {
    let Some((j, pod)) = target(s, pick, |j| j.shape().ranks == 2) else {
        return Ok(None);
    };
    let name = s.jobs[j].name.clone();
    if !disrupt::evict(&&*s.k, NS, &pod)? {
        return Ok(None);
    }
    let stopping = wait_for("the gang to be stopping", Duration::from_secs(30), || {
        let phase = output((s.k)().args([
            "get",
            "tj",
            "-n",
            NS,
            &name,
            "-o",
            "jsonpath={.status.phase}",
        ]));
        phase.is_ok_and(|p| p.trim() != "Running")
    });
    if stopping.is_err() {
        eprintln!("  {name} did not leave Running within 30 s");
    }
    step(format!(
        "  {pod} evicted; the API server goes down while {name} stops"
    ));
    restart_apiserver(s)?;
    Ok(Some(vec![name]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_pass_has_every_fault_once_and_a_seed_replays() {
        let mut a = Schedule::new(7);
        let first: Vec<Fault> = (0..Fault::ALL.len()).map(|_| a.next().fault).collect();
        for f in Fault::ALL {
            assert_eq!(first.iter().filter(|&&g| g == f).count(), 1, "{f:?}");
        }
        let mut b = Schedule::new(7);
        let again: Vec<Fault> = (0..Fault::ALL.len()).map(|_| b.next().fault).collect();
        assert_eq!(first, again);
        assert!((0..200).all(|_| a.next().gap <= Duration::from_secs(20)));
    }
}
