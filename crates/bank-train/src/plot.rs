//! The PNG of loss and kNN top-1 per epoch, redrawn after each evaluation.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::metrics::EpochMetrics;

/// Fonts tried for the labels; without one the chart is drawn without text.
const FONT_FILES: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

pub(crate) fn has_font() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        FONT_FILES.iter().any(|f| {
            std::fs::read(f).ok().is_some_and(|bytes| {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
        })
    })
}

/// Draws loss (left) and kNN top-1 (right) against the epoch into `path` (PNG, 1000×400).
/// Plotting is a diagnostic: failures are logged, never fatal.
pub fn draw(path: &Path, history: &[EpochMetrics]) {
    if let Err(e) = try_draw(path, history) {
        tracing::warn!(path = %path.display(), error = %e, "could not draw the training plot");
    }
}

fn try_draw(path: &Path, history: &[EpochMetrics]) -> Result<(), Box<dyn std::error::Error>> {
    if history.is_empty() {
        return Ok(());
    }
    let text = has_font();
    let root = BitMapBackend::new(path, (1000, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let last = history.last().map_or(1, |m| m.epoch).max(2) as f64;

    let losses: Vec<(f64, f64)> = history.iter().map(|m| (m.epoch as f64, m.loss)).collect();
    let max_loss = losses.iter().map(|p| p.1).fold(0.0, f64::max) * 1.1 + 1e-9;
    panel(
        &left,
        text,
        "training loss",
        1.0..last,
        0.0..max_loss,
        &losses,
        &BLUE,
    )?;

    // Against the bank; against recomputed features where the reference images are not bank
    // rows (unseen categories), whose runs have no kNN against the bank.
    let bank = history.iter().any(|m| m.knn_bank.is_some());
    let knn: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|m| {
            let k = if bank { m.knn_bank } else { m.knn_recomputed };
            k.map(|k| (m.epoch as f64, 100.0 * k.top1))
        })
        .collect();
    panel(
        &right,
        text,
        if bank {
            "kNN top-1 vs bank (%)"
        } else if knn.is_empty() {
            "kNN: not measured"
        } else {
            "kNN top-1 vs recomputed (%)"
        },
        1.0..last,
        0.0..percent_axis_top(&knn),
        &knn,
        &RED,
    )?;
    root.present()?;
    Ok(())
}

/// The top of a percentage axis from 0: the next multiple of 10 at least 5 points above the
/// highest value, at most 100 (a run at 20–36% would be a flat line on 0–100).
fn percent_axis_top(points: &[(f64, f64)]) -> f64 {
    let highest = points.iter().map(|p| p.1).fold(0.0, f64::max);
    (((highest + 5.0) / 10.0).ceil() * 10.0).clamp(10.0, 100.0)
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    text: bool,
    title: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    points: &[(f64, f64)],
    colour: &RGBColor,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(45);
    if text {
        builder.caption(title, ("sans-serif", 18));
    }
    let mut chart = builder.build_cartesian_2d(x, y)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("epoch");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    chart.draw_series(LineSeries::new(points.iter().copied(), colour))?;
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_percent_axis_ends_at_the_next_ten_above_the_values() {
        let top = |values: &[f64]| {
            let points: Vec<(f64, f64)> = values.iter().map(|&v| (1.0, v)).collect();
            percent_axis_top(&points)
        };
        assert_eq!(top(&[21.6, 35.75]), 50.0);
        assert_eq!(top(&[4.0]), 10.0);
        assert_eq!(top(&[]), 10.0);
        assert_eq!(top(&[94.0, 99.5]), 100.0);
    }
}
