//! The PNGs the benches draw.
//! - `bench peers`: rank 0's step over time for each workload, one panel
//!   per batch, with the disruptions as vertical lines. A drop in a line is
//!   work redone: the trainer went back to its checkpoint.
//! - `bench scale`: the controller's and the API server's memory over time
//!   while N jobs are created and brought up, one line per system.

use crate::peers::{Applied, Outcome, Scenario};
use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use std::path::Path;

const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// One panel per batch: `batches[i]` are the outcomes of the i-th batch and
/// `applied[i]` its disruptions.
pub fn steps_over_time(
    png: &Path,
    sc: &Scenario,
    batches: &[Vec<Outcome>],
    applied: &[Vec<Applied>],
) -> Result<()> {
    register_font()?;
    let root = BitMapBackend::new(png, (1200, 480 * batches.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let panels = root.split_evenly((batches.len(), 1));
    for (i, panel) in panels.iter().enumerate() {
        draw_panel(panel, sc, &batches[i], &applied[i], i + 1)
            .map_err(|e| anyhow!("drawing {}: {e}", png.display()))?;
    }
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", png.display()))
}

type Panel<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw_panel(
    panel: &Panel,
    sc: &Scenario,
    outcomes: &[Outcome],
    applied: &[Applied],
    batch: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let x_max = outcomes
        .iter()
        .flat_map(|o| o.curve.last())
        .map(|p| p.0)
        .fold(10.0, f64::max)
        * 1.05;
    let y_max = sc.steps as f64 * 1.05;
    let mut chart = ChartBuilder::on(panel)
        .caption(
            format!(
                "scenario {}, batch {batch}: save {} s, notice {} s",
                sc.name, sc.save_seconds, sc.notice_seconds
            ),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the workloads were created")
        .y_desc("step (rank 0)")
        .draw()?;
    for a in applied {
        let line = LineSeries::new([(a.offset, 0.0), (a.offset, y_max)], BLACK.stroke_width(2));
        chart.draw_series(line)?;
        let label = Text::new(a.kind.name(), (a.offset, y_max * 0.985), ("sans-serif", 14));
        chart.draw_series([label])?;
    }
    for (i, o) in outcomes.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                o.curve.iter().map(|&(t, s)| (t, s as f64)),
                colour.stroke_width(2),
            ))?
            .label(o.name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}

/// Two panels, the controller's RSS and the API server's, against the
/// seconds since creation began; `systems` are (name, samples) pairs.
pub fn memory_over_time(
    png: &Path,
    jobs: u32,
    systems: &[(String, Vec<crate::scale::Sample>)],
) -> Result<()> {
    register_font()?;
    if let Some(dir) = png.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let root = BitMapBackend::new(png, (1200, 960)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let panels = root.split_evenly((2, 1));
    let titles = [
        format!("{jobs} jobs: the controller's RSS (for Job, all of kube-controller-manager)"),
        format!("{jobs} jobs: kube-apiserver's RSS"),
    ];
    for (i, panel) in panels.iter().enumerate() {
        draw_memory(panel, &titles[i], systems, i)
            .map_err(|e| anyhow!("drawing {}: {e}", png.display()))?;
    }
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", png.display()))
}

fn draw_memory(
    panel: &Panel,
    title: &str,
    systems: &[(String, Vec<crate::scale::Sample>)],
    process: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mib = |s: &crate::scale::Sample| s.1[process] as f64 / f64::from(1 << 20);
    let points = systems.iter().flat_map(|(_, s)| s.iter());
    let (x_max, y_max) = points.fold((10.0f64, 16.0f64), |(x, y), s| (x.max(s.0), y.max(mib(s))));
    let mut chart = ChartBuilder::on(panel)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max * 1.05, 0f64..y_max * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the jobs' creation began")
        .y_desc("RSS (MiB)")
        .draw()?;
    for (i, (name, series)) in systems.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                series.iter().map(|s| (s.0, mib(s))),
                colour.stroke_width(2),
            ))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}

/// The text needs a TrueType font; fonts-dejavu-core is installed if none
/// of the usual paths has one.
fn register_font() -> Result<()> {
    let find = || FONT_PATHS.iter().find(|p| Path::new(p).exists());
    if find().is_none() {
        crate::util::apt_install(&["fonts-dejavu-core"])?;
    }
    let path = find().context("no DejaVuSans.ttf after installing fonts-dejavu-core")?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{path} is not a font plotters can read"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::{System, FITS};

    #[test]
    fn draws_a_png_with_a_panel_per_batch() {
        let outcome = |name: &str| Outcome {
            name: name.into(),
            system: System::TrainingJob,
            ranks: 1,
            grace: String::new(),
            wall: Some(10.0),
            start: Some(1.0),
            steps_redone: 0,
            failures: 0,
            restarts: 0,
            resumes: vec![],
            final_matches: true,
            curve: (0..100)
                .map(|i| (f64::from(i) / 10.0, i as u64 * 30))
                .collect(),
        };
        let applied = |offset| Applied {
            kind: crate::disrupt::Kind::Drain,
            at: 0.0,
            offset,
            hit: Default::default(),
        };
        let png = std::env::temp_dir().join(format!("tjo-plot-{}.png", std::process::id()));
        let batches = [
            vec![outcome("tj-1r"), outcome("job-1r")],
            vec![outcome("tj-2r")],
        ];
        steps_over_time(&png, &FITS, &batches, &[vec![applied(4.0)], vec![]]).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
        let _ = std::fs::remove_file(&png);
    }

    #[test]
    fn draws_memory_over_time_for_each_system() {
        let series = |mib: u64| -> Vec<crate::scale::Sample> {
            (0..50)
                .map(|i: u32| {
                    (
                        f64::from(i),
                        [(mib + u64::from(i)) << 20, 900 << 20, 100 << 20],
                    )
                })
                .collect()
        };
        let png = std::env::temp_dir().join(format!("tjo-mem-{}.png", std::process::id()));
        let systems = [
            ("Trainingjob".to_string(), series(16)),
            ("Jobset".to_string(), series(40)),
        ];
        memory_over_time(&png, 100, &systems).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
        let _ = std::fs::remove_file(&png);
    }
}
