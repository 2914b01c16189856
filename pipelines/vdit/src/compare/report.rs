//! `report.md` and the self-contained `report.html` of a comparison: the summary per method,
//! every run, the speed-versus-fidelity plot, density heat maps and, per prompt and seed, one
//! video with every method side by side (files in `tiles/`, beside the page).

use super::label;
use super::plots::{density_map, speed_fidelity, Point};
use super::{read_frames, RunResult};
use crate::video::{mean, Frame, FrameRate, VideoWriter};
use anyhow::Result;
use pipelines::t2v::Settings;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One method's numbers over all its runs.
pub struct Summary {
    /// The method spec.
    pub method: String,
    /// Runs.
    pub runs: usize,
    /// Dense denoising time over this method's, over the same prompts and seeds.
    pub speedup: f64,
    /// Mean denoising seconds.
    pub denoising_s: f64,
    /// Mean share of a step spent in attention.
    pub attention_share: Option<f64>,
    /// Mean PSNR and the worst frame's over all runs.
    pub psnr: (f64, f64),
    /// Mean SSIM and the worst frame's.
    pub ssim: (f64, f64),
    /// Mean temporal error.
    pub temporal_error: f64,
    /// Mean density.
    pub density: f64,
    /// Mean attention FLOPs per run.
    pub attention_flops: f64,
    /// Largest peak memory (GiB).
    pub peak_gib: Option<f64>,
}

/// Summary columns a caller adds per method (`vdit eval`'s accuracies): their names, and each
/// method's values in that order (a method without values shows dashes).
#[derive(Clone, Debug, Default)]
pub struct ExtraColumns {
    /// Column headers.
    pub names: Vec<String>,
    /// Values by method spec; `None` where a value is undefined.
    pub values: BTreeMap<String, Vec<Option<f64>>>,
}

/// The summary of each method, in the order the methods first appear.
pub fn summarize(runs: &[&RunResult]) -> Vec<Summary> {
    let mut order: Vec<&str> = Vec::new();
    for run in runs {
        if !order.contains(&run.method.as_str()) {
            order.push(&run.method);
        }
    }
    let dense: BTreeMap<(usize, u64), f64> = runs
        .iter()
        .filter(|r| r.method == "dense")
        .map(|r| ((r.prompt_index, r.seed), r.denoising_s))
        .collect();
    order
        .into_iter()
        .map(|method| {
            let mine: Vec<&&RunResult> = runs.iter().filter(|r| r.method == method).collect();
            let dense_total: f64 = mine
                .iter()
                .filter_map(|r| dense.get(&(r.prompt_index, r.seed)))
                .sum();
            let total: f64 = mine.iter().map(|r| r.denoising_s).sum();
            let fidelity: Vec<_> = mine.iter().filter_map(|r| r.fidelity.as_ref()).collect();
            let shares: Vec<f64> = mine
                .iter()
                .filter_map(|r| Some(r.attention_s? / r.denoising_s))
                .collect();
            Summary {
                method: method.to_string(),
                runs: mine.len(),
                speedup: dense_total / total,
                denoising_s: total / mine.len() as f64,
                attention_share: (!shares.is_empty()).then(|| mean(shares.iter().copied())),
                psnr: (
                    mean(fidelity.iter().map(|f| f.psnr_mean)),
                    fidelity
                        .iter()
                        .map(|f| f.psnr_worst)
                        .fold(f64::INFINITY, f64::min),
                ),
                ssim: (
                    mean(fidelity.iter().map(|f| f.ssim_mean)),
                    fidelity
                        .iter()
                        .map(|f| f.ssim_worst)
                        .fold(f64::INFINITY, f64::min),
                ),
                temporal_error: mean(fidelity.iter().map(|f| f.temporal_error)),
                density: mean(mine.iter().map(|r| r.density)),
                attention_flops: mean(mine.iter().map(|r| r.attention_flops)),
                peak_gib: mine.iter().filter_map(|r| r.peak_gib).reduce(f64::max),
            }
        })
        .collect()
}

/// The summary table in Markdown (also the HTML page's table), `extra`'s columns last.
fn summary_table(summaries: &[Summary], extra: &ExtraColumns) -> String {
    let mut md = String::from(
        "| method | runs | speed-up vs dense | denoise s | attention share | PSNR mean / worst (dB) | \
         SSIM mean / worst | temporal error | density | attention TFLOP | peak GiB |",
    );
    for name in &extra.names {
        let _ = write!(md, " {name} |");
    }
    md += &format!("\n|{}\n", " --- |".repeat(11 + extra.names.len()));
    for s in summaries {
        let share = s
            .attention_share
            .map_or("-".to_string(), |v| format!("{:.0} %", 100.0 * v));
        let peak = s.peak_gib.map_or("-".to_string(), |v| format!("{v:.2}"));
        let _ = write!(
            md,
            "| {} | {} | {:.2}x | {:.2} | {share} | {:.2} / {:.2} | {:.4} / {:.4} | {:.4} | {:.3} | {:.2} | {peak} |",
            s.method,
            s.runs,
            s.speedup,
            s.denoising_s,
            s.psnr.0,
            s.psnr.1,
            s.ssim.0,
            s.ssim.1,
            s.temporal_error,
            s.density,
            s.attention_flops / 1e12
        );
        let values = extra.values.get(&s.method);
        for i in 0..extra.names.len() {
            let cell = values
                .and_then(|v| v.get(i).copied().flatten())
                .map_or("-".to_string(), |v| format!("{v:.3}"));
            let _ = write!(md, " {cell} |");
        }
        md.push('\n');
    }
    md
}

/// Writes `report.md`, `report.html` and the side-by-side videos under `dir` (the summary with
/// `extra`'s columns); returns the HTML page's path.
pub fn write(
    dir: &Path,
    runs: &[&RunResult],
    settings: &Settings,
    extra: &ExtraColumns,
) -> Result<PathBuf> {
    let summaries = summarize(runs);
    let table = summary_table(&summaries, extra);
    let heading = format!(
        "{} frames of {}, {} steps ({} sampler), guidance {}; PSNR, SSIM and temporal error \
         against the dense run of the same prompt and seed (identical frames: PSNR 100 dB).",
        settings.frames, settings.size, settings.steps, settings.scheduler, settings.guidance
    );
    let mut md = format!("# vdit compare\n\n{heading}\n\n{table}\n## Runs\n\n");
    md += "| prompt | seed | method | denoise s | PSNR mean / worst | SSIM mean / worst | density |\n\
           | --- | --- | --- | --- | --- | --- | --- |\n";
    for r in runs {
        let (p, s) = r
            .fidelity
            .as_ref()
            .map_or((String::from("-"), String::from("-")), |f| {
                (
                    format!("{:.2} / {:.2}", f.psnr_mean, f.psnr_worst),
                    format!("{:.4} / {:.4}", f.ssim_mean, f.ssim_worst),
                )
            });
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} | {p} | {s} | {:.3} |",
            r.prompt_index + 1,
            r.seed,
            r.method,
            r.denoising_s,
            r.density
        );
    }
    pipelines::t2v::save_text(&dir.join("report.md"), &md)?;

    let points: Vec<Point> = summaries
        .iter()
        .map(|s| Point {
            label: s.method.clone(),
            speedup: s.speedup,
            ssim: s.ssim.0,
        })
        .collect();
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>vdit compare</title><style>\
         body{{font-family:sans-serif;margin:24px;max-width:1400px}}\
         table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px}}\
         .maps{{display:flex;flex-wrap:wrap;gap:8px}}</style></head><body>\
         <h1>vdit compare</h1><p>{}</p><h2>Summary</h2>{}<h2>Speed versus fidelity</h2>{}\
         <h2>Attention density per layer and step</h2><p>one map per method (its first run): \
         white = nothing computed, dark blue = dense</p><div class=\"maps\">",
        escape(&heading),
        markdown_table_to_html(&table),
        speed_fidelity(&points)?
    );
    for s in &summaries {
        if let Some(run) = runs.iter().find(|r| r.method == s.method) {
            html += &density_map(&s.method, &run.step_layer_density)?;
        }
    }
    html += "</div><h2>Side by side</h2>";
    for video in tile_videos(dir, runs, settings.fps)? {
        let file = &video.file;
        let _ = write!(
            html,
            "<h3>{}</h3><p>left to right, top to bottom: {}</p>",
            escape(&video.title),
            escape(&video.labels.join(" | "))
        );
        let media = if file.ends_with(".mp4") {
            format!(
                "<video src=\"{file}\" autoplay loop muted controls style=\"width:100%\"></video>"
            )
        } else {
            format!("<img src=\"{file}\" style=\"width:100%\">")
        };
        let _ = write!(
            html,
            "<div style=\"max-width:{}px\">{media}</div>",
            video.columns * 320
        );
    }
    html += "</body></html>\n";
    let page = dir.join("report.html");
    pipelines::t2v::save_text(&page, &html)?;
    Ok(page)
}

/// One side-by-side video of the report.
struct SideBySide {
    /// The prompt and seed.
    title: String,
    /// The file, relative to the report.
    file: String,
    /// The methods in tile order.
    labels: Vec<String>,
    /// Tiles per row.
    columns: usize,
}

/// For each prompt and seed, every method's frames tiled into one video under `dir/tiles/`
/// (MP4 when FFmpeg is built in, else GIF), each tile labelled with its method.
fn tile_videos(dir: &Path, runs: &[&RunResult], fps: u32) -> Result<Vec<SideBySide>> {
    let mut groups: BTreeMap<(usize, u64), Vec<&RunResult>> = BTreeMap::new();
    for run in runs {
        groups
            .entry((run.prompt_index, run.seed))
            .or_default()
            .push(run);
    }
    std::fs::create_dir_all(dir.join("tiles"))?;
    let extension = if cfg!(feature = "ffmpeg") {
        "mp4"
    } else {
        "gif"
    };
    let mut out = Vec::new();
    for ((prompt, seed), group) in groups {
        let videos = group
            .iter()
            .map(|r| read_frames(dir, r))
            .collect::<Result<Vec<_>>>()?;
        let columns = (group.len() as f64).sqrt().ceil() as usize;
        let labels: Vec<String> = group.iter().map(|r| r.method.clone()).collect();
        let tiled = tile(&videos, &labels, columns)?;
        let file = format!("tiles/prompt-{}-seed-{seed}.{extension}", prompt + 1);
        let (w, h) = (tiled[0].width(), tiled[0].height());
        let mut writer =
            VideoWriter::open_with(&dir.join(&file), w, h, FrameRate::new(fps, 1)?, true)?;
        for frame in &tiled {
            writer.push(frame)?;
        }
        writer.finish()?;
        out.push(SideBySide {
            title: format!(
                "prompt {}: \"{}\", seed {seed}",
                prompt + 1,
                group[0].prompt
            ),
            file,
            labels,
            columns,
        });
    }
    Ok(out)
}

/// Frames of `videos` (same size and length) laid out `columns` to a row, row by row, each
/// with its label at its top left; empty places are black.
fn tile(videos: &[Vec<Frame>], labels: &[String], columns: usize) -> Result<Vec<Frame>> {
    let first = &videos[0][0];
    let (w, h) = (first.width() as usize, first.height() as usize);
    let rows = videos.len().div_ceil(columns);
    let (width, height) = (w * columns, h * rows);
    let frames = videos.iter().map(Vec::len).min().unwrap_or(0);
    (0..frames)
        .map(|t| {
            let mut rgb = vec![0u8; width * height * 3];
            for (i, video) in videos.iter().enumerate() {
                let (x0, y0) = ((i % columns) * w, (i / columns) * h);
                let src = video[t].rgb();
                for y in 0..h {
                    let from = y * w * 3;
                    let to = ((y0 + y) * width + x0) * 3;
                    rgb[to..to + w * 3].copy_from_slice(&src[from..from + w * 3]);
                }
                let scale = (w / 200).max(1);
                label::draw(&mut rgb, width, (x0, y0), (w, h), &labels[i], scale);
            }
            Ok(Frame::new(width as u32, height as u32, rgb)?)
        })
        .collect()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The summary's Markdown table as an HTML table.
fn markdown_table_to_html(md: &str) -> String {
    let mut html = String::from("<table>");
    for (i, line) in md.lines().enumerate() {
        if i == 1 {
            continue;
        }
        let cell = if i == 0 { "th" } else { "td" };
        html += "<tr>";
        for value in line.trim_matches('|').split('|') {
            let _ = write!(html, "<{cell}>{}</{cell}>", escape(value.trim()));
        }
        html += "</tr>";
    }
    html + "</table>"
}
