//! A PNG line plot of a loss log: the raw loss in a light colour, its centred moving average
//! dark, with tick labels from the built-in font.

use std::io::Read;
use std::path::Path;

use image::{ImageFormat, Rgb, RgbImage};
use vdit_core::output::PartialOutput;

use super::font::{draw_text, text_width, GLYPH_HEIGHT};
use super::log::{read_loss_csv, LossRow};
use crate::{Error, Result};

/// Colour of the raw loss curve.
pub const RAW_COLOR: [u8; 3] = [168, 196, 232];
/// Colour of the moving-average curve.
pub const AVERAGE_COLOR: [u8; 3] = [22, 44, 128];

const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const GRID: Rgb<u8> = Rgb([232, 232, 232]);
const AXIS: Rgb<u8> = Rgb([90, 90, 90]);
const TEXT: Rgb<u8> = Rgb([40, 40, 40]);

/// Space around the plot area: left (y labels), right, top (title), bottom (x labels).
const MARGIN: (u32, u32, u32, u32) = (66, 18, 30, 36);

/// How [`plot_png_with`] draws.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlotOptions {
    /// Image width in pixels (default 800).
    pub width: u32,
    /// Image height in pixels (default 480).
    pub height: u32,
    /// A logarithmic loss axis (default off; non-positive losses are then left out).
    pub log_y: bool,
    /// Rows in the centred moving average (default `None`: a 25th of the rows, 1 to 1000).
    pub window: Option<usize>,
}

impl Default for PlotOptions {
    fn default() -> Self {
        Self {
            width: 800,
            height: 480,
            log_y: false,
            window: None,
        }
    }
}

/// Plots the loss log `csv` as the 800×480 PNG `png`, titled `title` (upper-case letters,
/// digits and a little punctuation are drawn; other characters show as boxes).
pub fn plot_png(csv: &Path, png: &Path, title: &str) -> Result<()> {
    plot_png_with(csv, png, title, &PlotOptions::default())
}

/// [`plot_png`] with options. An existing PNG at `png` is replaced (written under a temporary
/// name, then renamed); an existing file that is not a PNG is refused.
pub fn plot_png_with(csv: &Path, png: &Path, title: &str, options: &PlotOptions) -> Result<()> {
    let rows = read_loss_csv(csv)?;
    let img = render(&rows, title, options).map_err(|e| match e {
        Error::Usage(msg) => Error::Usage(format!("{}: {msg}", csv.display())),
        other => other,
    })?;
    save_png(&img, png)
}

/// Plots several runs' loss logs end to end as one curve (a run continued from the one before
/// it: each log's steps are counted on from the last step of the previous log) to the PNG
/// `png`, as [`plot_png_with`] does; returns the joined rows.
pub fn plot_runs_png(
    csvs: &[&Path],
    png: &Path,
    title: &str,
    options: &PlotOptions,
) -> Result<Vec<LossRow>> {
    let mut joined: Vec<LossRow> = Vec::new();
    for csv in csvs {
        let offset = joined.last().map_or(0, |row| row.step);
        for row in read_loss_csv(csv)? {
            let step = row.step.checked_add(offset).ok_or_else(|| {
                Error::Usage(format!(
                    "{}: step {} overflows once the runs before it are counted",
                    csv.display(),
                    row.step
                ))
            })?;
            joined.push(LossRow { step, ..row });
        }
    }
    save_png(&render(&joined, title, options)?, png)?;
    Ok(joined)
}

/// Writes `img` to `png` under a temporary name, then renames it; an existing file that is
/// not a PNG is refused.
fn save_png(img: &RgbImage, png: &Path) -> Result<()> {
    if png.exists() && !is_png(png) {
        return Err(Error::Usage(format!(
            "{} exists and is not a PNG image: move it away or choose another plot path",
            png.display()
        )));
    }
    let partial = PartialOutput::new(png)?;
    img.save_with_format(partial.temp(), ImageFormat::Png)
        .map_err(|e| Error::io("write", png, e))?;
    partial.commit().map_err(Error::from)
}

/// True when the file at `path` starts with the PNG signature.
fn is_png(path: &Path) -> bool {
    let mut head = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && head == *b"\x89PNG\r\n\x1a\n"
}

/// The centred moving mean of `values` over `window` entries (fewer near the ends, where the
/// window is cut to the data).
fn moving_average(values: &[f64], window: usize) -> Vec<f64> {
    let window = window.max(1);
    let before = (window - 1) / 2;
    let after = window - 1 - before;
    // prefix[i] = sum of values[..i]
    let mut prefix = Vec::with_capacity(values.len() + 1);
    prefix.push(0.0);
    for v in values {
        prefix.push(prefix[prefix.len() - 1] + v);
    }
    (0..values.len())
        .map(|i| {
            let lo = i.saturating_sub(before);
            let hi = (i + after + 1).min(values.len());
            (prefix[hi] - prefix[lo]) / (hi - lo) as f64
        })
        .collect()
}

/// About `target` round-numbered ticks (1, 2 or 5 times a power of ten apart) in `[lo, hi]`,
/// and their spacing.
fn nice_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64) {
    let raw = (hi - lo) / target.max(1) as f64;
    if !(raw.is_finite() && raw > 0.0) {
        return (vec![lo], 1.0);
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let spacing = magnitude
        * match raw / magnitude {
            r if r < 1.5 => 1.0,
            r if r < 3.0 => 2.0,
            r if r < 7.0 => 5.0,
            _ => 10.0,
        };
    let mut ticks = Vec::new();
    let mut k = (lo / spacing).ceil();
    while k * spacing <= hi + spacing * 1e-9 && ticks.len() < 50 {
        ticks.push(k * spacing);
        k += 1.0;
    }
    (ticks, spacing)
}

/// A tick label: plain with as many decimals as the spacing needs, or `2.5e-4` style for very
/// large or small values.
fn tick_label(value: f64, spacing: f64) -> String {
    if value.abs() < spacing.abs() * 1e-6 {
        return "0".to_string();
    }
    let magnitude = value.abs();
    if !(1e-3..1e6).contains(&magnitude) {
        let text = format!("{value:.2e}");
        let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        return format!("{mantissa}e{exponent}");
    }
    let decimals = if spacing >= 1.0 {
        0
    } else {
        ((-spacing.log10()).ceil().max(0.0) as usize).min(8)
    };
    format!("{value:.decimals$}")
}

/// Maps data coordinates to pixels in the plot area.
struct Frame {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        self.left + (x - self.x.0) / (self.x.1 - self.x.0) * (self.right - self.left)
    }

    fn py(&self, y: f64) -> f64 {
        self.bottom - (y - self.y.0) / (self.y.1 - self.y.0) * (self.bottom - self.top)
    }

    fn inside(&self, x: f64, y: f64) -> bool {
        x >= self.left && x <= self.right && y >= self.top && y <= self.bottom
    }
}

/// Sets the pixel at (`x`, `y`) when it lies in the image.
fn put(img: &mut RgbImage, x: i64, y: i64, color: Rgb<u8>) {
    if x >= 0
        && y >= 0
        && (x as u64) < u64::from(img.width())
        && (y as u64) < u64::from(img.height())
    {
        img.put_pixel(x as u32, y as u32, color);
    }
}

/// A straight line between two pixel positions, `thick` pixels wide, kept inside `frame`.
fn line(
    img: &mut RgbImage,
    frame: &Frame,
    a: (f64, f64),
    b: (f64, f64),
    color: Rgb<u8>,
    thick: i64,
) {
    let steps = (b.0 - a.0)
        .abs()
        .max((b.1 - a.1).abs())
        .ceil()
        .clamp(1.0, 1e5) as usize;
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let x = a.0 + (b.0 - a.0) * t;
        let y = a.1 + (b.1 - a.1) * t;
        if !frame.inside(x, y) {
            continue;
        }
        let (x, y) = (x.round() as i64, y.round() as i64);
        for dx in 0..thick {
            for dy in 0..thick {
                if frame.inside((x + dx) as f64, (y + dy) as f64) {
                    put(img, x + dx, y + dy, color);
                }
            }
        }
    }
}

/// Draws the polyline through `points` (data coordinates).
fn polyline(img: &mut RgbImage, frame: &Frame, points: &[(f64, f64)], color: Rgb<u8>, thick: i64) {
    let pixels: Vec<(f64, f64)> = points
        .iter()
        .map(|&(x, y)| (frame.px(x), frame.py(y)))
        .collect();
    match pixels.as_slice() {
        [] => {}
        [only] => line(
            img,
            frame,
            (only.0 - 1.0, only.1),
            (only.0 + 1.0, only.1),
            color,
            3,
        ),
        _ => {
            for pair in pixels.windows(2) {
                line(img, frame, pair[0], pair[1], color, thick);
            }
        }
    }
}

/// The y ticks (in plotted units, i.e. log10 of the loss on a log axis) and their labels.
fn y_ticks(lo: f64, hi: f64, log_y: bool) -> Vec<(f64, String)> {
    if log_y && hi - lo >= 1.0 {
        // Decades, with 2 and 5 between them when there are few decades.
        let mantissas: &[f64] = if hi - lo <= 3.0 {
            &[1.0, 2.0, 5.0]
        } else {
            &[1.0]
        };
        let (first, last) = (lo.floor() as i32, hi.ceil() as i32);
        let stride = usize::try_from((last - first) / 8 + 1).unwrap_or(1);
        let mut ticks = Vec::new();
        for k in (first..=last).step_by(stride) {
            for m in mantissas {
                let value = m * 10f64.powi(k);
                let at = value.log10();
                if (lo..=hi).contains(&at) {
                    ticks.push((at, tick_label(value, value)));
                }
            }
        }
        return ticks;
    }
    if log_y {
        let (values, spacing) = nice_ticks(10f64.powf(lo), 10f64.powf(hi), 4);
        return values
            .into_iter()
            .filter(|v| *v > 0.0)
            .map(|v| (v.log10(), tick_label(v, spacing)))
            .collect();
    }
    let (values, spacing) = nice_ticks(lo, hi, 5);
    values
        .into_iter()
        .map(|v| (v, tick_label(v, spacing)))
        .collect()
}

/// Renders the plot of `rows` (rows whose loss cannot be plotted are left out).
pub fn render(rows: &[LossRow], title: &str, options: &PlotOptions) -> Result<RgbImage> {
    let PlotOptions {
        width,
        height,
        log_y,
        window,
    } = *options;
    if !(200..=8192).contains(&width) || !(120..=8192).contains(&height) {
        return Err(Error::Usage(format!(
            "plot size {width}x{height} is outside 200x120 to 8192x8192: give e.g. 800x480"
        )));
    }
    let points: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.loss.is_finite() && (!log_y || r.loss > 0.0))
        .map(|r| (r.step as f64, r.loss))
        .collect();
    if points.is_empty() {
        return Err(Error::Usage(
            "no plottable losses (finite, and positive for a log axis): train some steps first"
                .to_string(),
        ));
    }
    let window = window.unwrap_or((points.len() / 25).clamp(1, 1000));
    let losses: Vec<f64> = points.iter().map(|p| p.1).collect();
    let average = moving_average(&losses, window);
    let plotted = |v: f64| if log_y { v.log10() } else { v };
    let raw: Vec<(f64, f64)> = points.iter().map(|&(x, y)| (x, plotted(y))).collect();
    let smooth: Vec<(f64, f64)> = points
        .iter()
        .zip(&average)
        .map(|(&(x, _), &y)| (x, plotted(y)))
        .collect();

    let (mut x_lo, mut x_hi) = raw.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    if x_hi <= x_lo {
        x_lo -= 1.0;
        x_hi += 1.0;
    }
    let (mut y_lo, mut y_hi) = raw.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    if y_hi - y_lo <= y_hi.abs().max(y_lo.abs()) * 1e-9 {
        let pad = if log_y {
            0.5
        } else {
            (y_lo.abs() * 0.1).max(1e-6)
        };
        y_lo -= pad;
        y_hi += pad;
    } else {
        let pad = (y_hi - y_lo) * 0.04;
        y_lo -= pad;
        y_hi += pad;
    }

    let (left, right, top, bottom) = MARGIN;
    let frame = Frame {
        left: f64::from(left),
        right: f64::from(width - right),
        top: f64::from(top),
        bottom: f64::from(height - bottom),
        x: (x_lo, x_hi),
        y: (y_lo, y_hi),
    };
    let mut img = RgbImage::from_pixel(width, height, BACKGROUND);
    let (fl, fr, ft, fb) = (
        frame.left as i64,
        frame.right as i64,
        frame.top as i64,
        frame.bottom as i64,
    );
    let glyph_half = i64::from(GLYPH_HEIGHT / 2);

    let (x_values, x_spacing) = nice_ticks(x_lo, x_hi, 6);
    // Steps are whole numbers: no ticks between them.
    for x in x_values.into_iter().filter(|x| x.fract() == 0.0) {
        let px = frame.px(x).round() as i64;
        for y in ft..=fb {
            put(&mut img, px, y, GRID);
        }
        for y in fb..fb + 4 {
            put(&mut img, px, y, AXIS);
        }
        let label = tick_label(x, x_spacing);
        let half = i64::from(text_width(&label, 1) / 2);
        draw_text(&mut img, px - half, fb + 7, &label, TEXT, 1);
    }
    for (y, label) in y_ticks(y_lo, y_hi, log_y) {
        let py = frame.py(y).round() as i64;
        if py < ft || py > fb {
            continue;
        }
        for x in fl..=fr {
            put(&mut img, x, py, GRID);
        }
        for x in fl - 4..fl {
            put(&mut img, x, py, AXIS);
        }
        let w = i64::from(text_width(&label, 1));
        draw_text(&mut img, fl - 7 - w, py - glyph_half, &label, TEXT, 1);
    }
    for x in fl..=fr {
        put(&mut img, x, fb, AXIS);
        put(&mut img, x, ft, AXIS);
    }
    for y in ft..=fb {
        put(&mut img, fl, y, AXIS);
        put(&mut img, fr, y, AXIS);
    }

    polyline(&mut img, &frame, &raw, Rgb(RAW_COLOR), 1);
    polyline(&mut img, &frame, &smooth, Rgb(AVERAGE_COLOR), 2);

    // Upper case: the font's only lower-case letter is the `e` of exponents.
    let title = title.to_uppercase();
    let title_x = (i64::from(width) - i64::from(text_width(&title, 2))) / 2;
    draw_text(&mut img, title_x.max(2), 8, &title, TEXT, 2);
    let axis = if log_y { "LOSS (LOG)" } else { "LOSS" };
    draw_text(&mut img, 4, ft - 12, axis, TEXT, 1);
    let step_label = "STEP";
    let half = i64::from(text_width(step_label, 1) / 2);
    draw_text(
        &mut img,
        (fl + fr) / 2 - half,
        i64::from(height) - 12,
        step_label,
        TEXT,
        1,
    );
    // Legend, top right inside the plot area.
    let entries = [
        ("RAW".to_string(), Rgb(RAW_COLOR)),
        (format!("MEAN OF {window}"), Rgb(AVERAGE_COLOR)),
    ];
    for (i, (label, color)) in entries.iter().enumerate() {
        let y = ft + 8 + i as i64 * 12;
        let x = fr - 8 - i64::from(text_width(label, 1)) - 24;
        for dx in 0..18 {
            for dy in 0..2 {
                put(&mut img, x + dx, y + 3 + dy, *color);
            }
        }
        draw_text(&mut img, x + 24, y, label, TEXT, 1);
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let (ticks, spacing) = nice_ticks(0.0, 1000.0, 6);
        assert_eq!(spacing, 200.0);
        assert_eq!(ticks, vec![0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]);
        let (ticks, spacing) = nice_ticks(0.013, 0.061, 5);
        assert!((spacing - 0.01).abs() < 1e-15);
        assert_eq!(ticks.len(), 5);
        assert_eq!(tick_label(ticks[0], spacing), "0.02");
    }

    #[test]
    fn labels_are_short() {
        assert_eq!(tick_label(0.0, 0.5), "0");
        assert_eq!(tick_label(1500.0, 500.0), "1500");
        assert_eq!(tick_label(0.25, 0.05), "0.25");
        assert_eq!(tick_label(1e-4, 1e-4), "1e-4");
        assert_eq!(tick_label(2.5e-5, 5e-6), "2.5e-5");
        assert_eq!(tick_label(3e7, 1e7), "3e7");
    }

    #[test]
    fn the_moving_average_is_centred() {
        let avg = moving_average(&[1.0, 3.0, 5.0, 7.0, 9.0], 3);
        assert_eq!(avg, vec![2.0, 3.0, 5.0, 7.0, 8.0]);
        assert_eq!(moving_average(&[4.0, 8.0], 1), vec![4.0, 8.0]);
    }

    /// Two logs of 3 and 2 steps join as steps 1-5 in order, every other field kept; the
    /// plot is a PNG, and a file that is not one is not replaced.
    #[test]
    fn runs_join_end_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, losses: &[f64]| {
            let path = dir.path().join(name);
            let mut text = format!("{}\n", crate::optim::LOSS_HEADER);
            for (i, loss) in losses.iter().enumerate() {
                text += &format!("{},{loss},0.001,{},0.5\n", i + 1, 2.0 * loss);
            }
            std::fs::write(&path, text).unwrap();
            path
        };
        let first = write("a.csv", &[0.9, 0.8, 0.7]);
        let second = write("b.csv", &[0.6, 0.5]);
        let png = dir.path().join("joined.png");
        let rows = plot_runs_png(&[&first, &second], &png, "T", &PlotOptions::default()).unwrap();
        let steps: Vec<u64> = rows.iter().map(|r| r.step).collect();
        let losses: Vec<f64> = rows.iter().map(|r| r.loss).collect();
        assert_eq!(steps, vec![1, 2, 3, 4, 5]);
        assert_eq!(losses, vec![0.9, 0.8, 0.7, 0.6, 0.5]);
        assert!(rows.iter().all(|r| r.grad_norm == 2.0 * r.loss));
        assert!(is_png(&png));
        let text = dir.path().join("notes.png");
        std::fs::write(&text, "not an image").unwrap();
        assert!(plot_runs_png(&[&first], &text, "T", &PlotOptions::default()).is_err());
        assert_eq!(std::fs::read_to_string(&text).unwrap(), "not an image");
    }

    #[test]
    fn log_ticks_fill_short_ranges() {
        let labels: Vec<String> = y_ticks(0.045f64.log10(), 2.2f64.log10(), true)
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        assert_eq!(labels, vec!["0.05", "0.1", "0.2", "0.5", "1", "2"]);
    }
}
