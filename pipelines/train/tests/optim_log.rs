//! The loss log (CSV, truncated on resume) and its PNG plot.

use train::optim::{
    loss_csv, plot_png, plot_png_with, read_loss_csv, LossLog, LossRow, PlotOptions, AVERAGE_COLOR,
    LOSS_HEADER, RAW_COLOR,
};

fn row(step: u64) -> LossRow {
    let x = step as f64;
    LossRow {
        step,
        // A decaying loss with deterministic wiggles.
        loss: 2.0 * (-x / 120.0).exp() + 0.05 + 0.15 * (x * 1.7).sin().abs(),
        lr: 1e-4,
        grad_norm: 1.0 / (1.0 + x),
        seconds: 0.25,
    }
}

#[test]
fn resuming_drops_the_rows_after_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut log = LossLog::start(&run).unwrap();
    log.set_flush_every(3);
    for step in 1..=12 {
        log.append(&row(step)).unwrap();
    }
    drop(log);
    let path = loss_csv(&run);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(&format!("{LOSS_HEADER}\n")));
    assert_eq!(read_loss_csv(&path).unwrap().len(), 12);

    // The run crashed after step 12 with its last checkpoint at step 8: resume from there.
    let mut log = LossLog::resume(&run, 8).unwrap();
    let kept = read_loss_csv(&path).unwrap();
    assert_eq!(
        kept.iter().map(|r| r.step).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    assert_eq!(kept[3], row(4), "rows round-trip exactly");
    for step in 9..=10 {
        log.append(&row(step)).unwrap();
    }
    log.flush().unwrap();
    let steps: Vec<u64> = read_loss_csv(&path)
        .unwrap()
        .iter()
        .map(|r| r.step)
        .collect();
    assert_eq!(steps, (1..=10).collect::<Vec<_>>());
    drop(log);

    // Starting afresh empties our own log.
    LossLog::start(&run).unwrap();
    assert!(read_loss_csv(&path).unwrap().is_empty());

    // A file that is not a loss log is never touched.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(loss_csv(&other), "a,b\n1,2\n").unwrap();
    let err = LossLog::resume(&other, 3).unwrap_err().to_string();
    assert!(err.contains("not a vdit loss log"), "{err}");
    assert!(LossLog::start(&other).is_err());
    assert_eq!(
        std::fs::read_to_string(loss_csv(&other)).unwrap(),
        "a,b\n1,2\n"
    );

    // Resuming without a log starts one.
    let fresh = dir.path().join("fresh");
    LossLog::resume(&fresh, 5).unwrap();
    assert!(read_loss_csv(&loss_csv(&fresh)).unwrap().is_empty());
}

fn count(img: &image::RgbImage, color: [u8; 3]) -> usize {
    img.pixels().filter(|p| p.0 == color).count()
}

#[test]
fn the_plot_is_a_png_with_both_curves() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = LossLog::start(dir.path()).unwrap();
    for step in 1..=400 {
        log.append(&row(step)).unwrap();
    }
    // A diverged step is logged but not plotted.
    log.append(&LossRow {
        loss: f64::NAN,
        ..row(401)
    })
    .unwrap();
    drop(log);
    let csv = loss_csv(dir.path());
    let png = dir.path().join("loss.png");
    plot_png(&csv, &png, "DiT stage 1 loss").unwrap();
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (800, 480));
    let dark = count(&img, AVERAGE_COLOR);
    let light = count(&img, RAW_COLOR);
    assert!(dark > 600, "{dark} moving-average pixels");
    assert!(light > 300, "{light} raw-loss pixels");
    // The curves stay inside the plot area (the legend samples are inside it too).
    for (x, y, p) in img.enumerate_pixels() {
        if p.0 == AVERAGE_COLOR {
            assert!(
                (66..=782).contains(&x) && (30..=444).contains(&y),
                "({x}, {y})"
            );
        }
    }

    // Log scale, and the PNG is replaced in place.
    let options = PlotOptions {
        log_y: true,
        ..PlotOptions::default()
    };
    plot_png_with(&csv, &png, "loss (log)", &options).unwrap();
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (800, 480));
    assert!(count(&img, AVERAGE_COLOR) > 600);

    // Not over a file that is not a PNG; not from a log without losses.
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "words").unwrap();
    assert!(plot_png(&csv, &text, "x").is_err());
    assert_eq!(std::fs::read_to_string(&text).unwrap(), "words");
    let empty = dir.path().join("empty");
    LossLog::start(&empty).unwrap();
    let err = plot_png(&loss_csv(&empty), &empty.join("loss.png"), "x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no plottable losses"), "{err}");
}
