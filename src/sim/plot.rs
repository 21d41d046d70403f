//! SVG plots of a simulated run: phase error (µs) and frequency error (ppm) against
//! time, one panel each.

use std::path::Path;

use plotters::prelude::*;

use super::Trace;

/// Points drawn per panel at most; longer runs are thinned evenly.
const MAX_POINTS: usize = 4000;

pub fn draw(file: &Path, title: &str, trace: &Trace) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", file.display());
    let root = SVGBackend::new(file, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let (top, bottom) = root.split_vertically(300);
    let step = (trace.time.len() / MAX_POINTS).max(1);
    let thin = |values: &[f64], scale: f64| -> Vec<(f64, f64)> {
        trace
            .time
            .iter()
            .zip(values)
            .step_by(step)
            .map(|(t, v)| (*t, v * scale))
            .collect()
    };
    let end = trace.time.last().copied().unwrap_or(1.0);
    let panels = [
        (&top, thin(&trace.phase, 1e6), "phase error (µs)", RED),
        (
            &bottom,
            thin(&trace.frequency, 1e6),
            "frequency error (ppm)",
            BLUE,
        ),
    ];
    for (area, points, label, color) in panels {
        // Start-up transients would hide the steady state: clip to the 1st–99th percentile.
        let mut sorted: Vec<f64> = points.iter().map(|p| p.1).collect();
        sorted.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            sorted
                .get((q * (sorted.len().max(1) - 1) as f64) as usize)
                .copied()
        };
        let (low, high) = (pick(0.01).unwrap_or(-1.0), pick(0.99).unwrap_or(1.0));
        let margin = ((high - low) * 0.1).max(1e-3);
        let mut chart = ChartBuilder::on(area)
            .caption(format!("ntimed sim {title}: {label}"), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..end, (low - margin)..(high + margin))
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_desc(label)
            .draw()
            .map_err(|e| fail(&e))?;
        chart
            .draw_series(LineSeries::new(points, &color))
            .map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))
}
