//! `ablation.png`: kNN top-1 against the bank per epoch, one line per variant (the mean over
//! the seeds) in a band from the lowest to the highest seed.

use std::path::Path;

use plotters::prelude::*;

use super::AblationReport;
use crate::{Error, Result};

/// Line colours, one per variant in [`super::Variant::ALL`] order.
const COLOURS: [RGBColor; 4] = [
    RGBColor(120, 120, 120),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

/// Draws `report`'s curves into `path` (PNG, 900×520).
///
/// # Errors
/// [`Error::Report`] naming `path` when the drawing backend fails (an unwritable folder).
pub fn draw(report: &AblationReport, path: &Path) -> Result<()> {
    try_draw(report, path).map_err(|e| Error::Report {
        path: path.to_path_buf(),
        reason: format!("cannot draw the ablation plot: {e}"),
    })
}

fn try_draw(
    report: &AblationReport,
    path: &Path,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let text = crate::plot::has_font();
    let curves: Vec<_> = report
        .variants
        .iter()
        .map(|v| (v.variant, v.curve()))
        .collect();
    let last = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|(e, _)| *e))
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let top = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|(_, s)| s.max))
        .fold(10.0, f64::max);
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(50);
    if text {
        builder.caption(
            format!(
                "{}: kNN top-1 vs bank (%), mean and range over seeds",
                report.recipe
            ),
            ("sans-serif", 18),
        );
    }
    let mut chart = builder.build_cartesian_2d(1.0..last, 0.0..(top * 1.1).min(100.0))?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("epoch").y_desc("kNN top-1 (%)");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    for (variant, curve) in &curves {
        let colour = COLOURS[*variant as usize];
        let mut band: Vec<(f64, f64)> = curve.iter().map(|(e, s)| (*e as f64, s.max)).collect();
        band.extend(curve.iter().rev().map(|(e, s)| (*e as f64, s.min)));
        chart.draw_series(std::iter::once(Polygon::new(
            band,
            colour.mix(0.18).filled(),
        )))?;
        let line = chart.draw_series(LineSeries::new(
            curve.iter().map(|(e, s)| (*e as f64, s.mean)),
            colour.stroke_width(2),
        ))?;
        if text {
            line.label(variant.name()).legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
