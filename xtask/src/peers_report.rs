//! The tables `bench peers` prints, in Markdown, for docs/benchmarks.md.

use crate::peers::{Applied, Outcome, Scenario, System};

pub fn print(sc: &Scenario, seed: u64, outcomes: &[Outcome], applied: &[Vec<Applied>]) {
    println!(
        "\n### Scenario {}: save {} s, notice {} s, {} steps of {} s, a checkpoint every {} steps (seed {seed})\n",
        sc.name, sc.save_seconds, sc.notice_seconds, sc.steps, sc.step_seconds, sc.ckpt_every
    );
    println!("| workload | ranks | grace | created -> first step | wall to {} steps | goodput | vs TrainingJob | steps redone | counted as failures | restarts | disruption -> training p50 / p99 | final weights = uninterrupted |", sc.steps);
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for o in outcomes {
        print_row(sc, o, outcomes);
    }
    for (i, batch) in applied.iter().enumerate() {
        let start = batch.first().map(|a| a.at).unwrap_or_default();
        let list: Vec<String> = batch
            .iter()
            .map(|a| {
                format!(
                    "{} (+{:.0} s, {} pods)",
                    a.kind.name(),
                    a.at - start,
                    a.hit.values().map(Vec::len).sum::<usize>()
                )
            })
            .collect();
        println!("\nBatch {}: {}", i + 1, list.join("; "));
    }
}

fn print_row(sc: &Scenario, o: &Outcome, all: &[Outcome]) {
    let tj = all
        .iter()
        .find(|t| t.system == System::TrainingJob && t.ranks == o.ranks)
        .and_then(|t| t.wall);
    let wall = o
        .wall
        .map_or("did not finish".into(), |w| format!("{w:.0} s"));
    let goodput = o.wall.map_or("-".into(), |w| {
        format!("{:.1} steps/s", sc.steps as f64 / w)
    });
    let ratio = o
        .wall
        .zip(tj)
        .map_or("-".into(), |(w, t)| format!("{:.2}x", w / t));
    let (p50, p99) = quantiles(&o.resumes);
    let start = o.start.map_or("-".into(), |s| format!("{s:.1} s"));
    println!(
        "| {} | {} | {} | {start} | {wall} | {goodput} | {ratio} | {} | {} | {} | {p50} / {p99} | {} |",
        o.name,
        o.ranks,
        o.grace,
        o.steps_redone,
        o.failures,
        o.restarts,
        if o.final_matches { "yes" } else { "no" }
    );
}

/// Nearest-rank p50 and p99, in seconds.
fn quantiles(samples: &[f64]) -> (String, String) {
    if samples.is_empty() {
        return ("-".into(), "-".into());
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let at = |p: f64| s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    (format!("{:.1} s", at(0.50)), format!("{:.1} s", at(0.99)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        assert_eq!(quantiles(&[]), ("-".into(), "-".into()));
        assert_eq!(
            quantiles(&[3.0, 1.0, 2.0]),
            ("2.0 s".into(), "3.0 s".into())
        );
        assert_eq!(quantiles(&[5.0]), ("5.0 s".into(), "5.0 s".into()));
    }
}
