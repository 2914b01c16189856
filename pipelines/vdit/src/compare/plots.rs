//! The report's plots as SVG text (through plotters' SVG backend), to inline in the HTML.

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// A labelled point of the speed-versus-fidelity plot.
pub struct Point {
    /// The method.
    pub label: String,
    /// Speed-up over dense (x).
    pub speedup: f64,
    /// Mean SSIM against dense (y): bounded by 1 (dense itself), where the PSNR of identical
    /// frames is a cap that would squash every other point to the bottom.
    pub ssim: f64,
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("cannot draw the plot: {e:?}")
}

/// Speed-up over dense against mean SSIM, one labelled point per method.
pub fn speed_fidelity(points: &[Point]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let max_x = points.iter().map(|p| p.speedup).fold(1.0, f64::max) * 1.15;
        let ys = points.iter().map(|p| p.ssim);
        let (min_y, max_y) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
            (a.min(y), b.max(y))
        });
        let (min_y, max_y) = if min_y.is_finite() {
            let pad = ((max_y - min_y) * 0.1).max(0.01);
            (min_y - pad, max_y + pad)
        } else {
            (0.0, 1.0)
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "speed versus fidelity (mean over prompts and seeds)",
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..max_x, min_y..max_y)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("speed-up over dense (denoising time)")
            .y_desc("mean SSIM vs dense")
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(points.iter().map(|p| {
                EmptyElement::at((p.speedup, p.ssim))
                    + Circle::new((0, 0), 5, BLUE.filled())
                    + Text::new(p.label.clone(), (8, -6), ("sans-serif", 12))
            }))
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// Density per layer (x) and step (y) as a heat map, white 0 to dark blue 1.
pub fn density_map(title: &str, density: &[Vec<f64>]) -> Result<String> {
    let steps = density.len().max(1);
    let layers = density.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (420, 260)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(36)
            .build_cartesian_2d(0..layers, 0..steps)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("layer")
            .y_desc("step")
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(density.iter().enumerate().flat_map(|(step, row)| {
                row.iter().enumerate().map(move |(layer, &d)| {
                    let shade = (255.0 * (1.0 - d.clamp(0.0, 1.0))) as u8;
                    Rectangle::new(
                        [(layer, step), (layer + 1, step + 1)],
                        RGBColor(shade, shade, 255).filled(),
                    )
                })
            }))
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}
