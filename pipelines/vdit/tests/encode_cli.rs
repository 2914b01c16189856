//! `vdit encode`: PNG folders and Y4M files in, playable video out; bad input in one line.

mod common;
mod t2v_common;

use common::{fps16, gradient_video, names_in};
use std::path::Path;
use std::process::{Command, Output};
use t2v_common::one_line_error;
use vdit::video::{Frame, FrameRate, VideoWriter};

fn vdit(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vdit"))
        .arg("encode")
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("vdit runs")
}

/// `vdit encode ARGS --fps FPS --overwrite`.
fn vdit_with_fps(args: &[&Path], fps: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vdit"))
        .arg("encode")
        .args(args)
        .args(["--fps", fps, "--overwrite"])
        .output()
        .expect("vdit runs")
}

fn write_frames(path: &Path, frames: &[Frame], fps: FrameRate) {
    let mut writer = VideoWriter::open(path, frames[0].width(), frames[0].height(), fps).unwrap();
    for frame in frames {
        writer.push(frame).unwrap();
    }
    writer.finish().unwrap();
}

#[test]
fn missing_and_unreadable_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mp4");
    let err = one_line_error(vdit(&[&dir.path().join("nothing.y4m"), &out]));
    assert!(
        err.contains("nothing.y4m") && err.contains("No such file"),
        "{err}"
    );
    let err = one_line_error(vdit(&[&dir.path().join("nothing"), &out]));
    assert!(err.contains("does not exist"), "{err}");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    let err = one_line_error(vdit(&[&text, &out]));
    assert!(
        err.contains("give a folder of PNG frames or a .y4m file"),
        "{err}"
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = one_line_error(vdit(&[&empty, &out]));
    assert!(err.contains("holds no .png files"), "{err}");
    let err = one_line_error(vdit_with_fps(&[&text, &out], "0"));
    assert!(err.contains("not a positive number"), "{err}");
    assert_eq!(names_in(dir.path()), ["empty", "notes.txt"]);
}

#[test]
fn frames_of_mixed_sizes_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("frames");
    write_frames(&folder, &gradient_video(2, 16, 12), fps16());
    let small = gradient_video(1, 8, 8);
    image::save_buffer(
        folder.join("frame_00002.png"),
        small[0].rgb(),
        8,
        8,
        image::ExtendedColorType::Rgb8,
    )
    .unwrap();
    let err = one_line_error(vdit(&[&folder, &dir.path().join("out.y4m")]));
    assert!(
        err.contains("frame_00002.png") && err.contains("8x8") && err.contains("16x12"),
        "{err}"
    );
    assert_eq!(names_in(dir.path()), ["frames"]);
}

#[test]
fn y4m_to_png_folder_needs_no_ffmpeg() {
    let video = gradient_video(5, 16, 12);
    let dir = tempfile::tempdir().unwrap();
    let y4m = dir.path().join("in.y4m");
    write_frames(&y4m, &video, fps16());
    let out = vdit(&[&y4m, &dir.path().join("frames")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("5 frames of 16x12 at 16 fps"), "{stdout}");
    assert_eq!(names_in(&dir.path().join("frames")).len(), 5);
}

#[cfg(feature = "ffmpeg")]
mod with_ffmpeg {
    use super::*;
    use vdit::video::{psnr, read_video};

    fn encoded(input: &Path, output: &Path, fps: Option<&str>) -> String {
        let out = match fps {
            Some(fps) => vdit_with_fps(&[input, output], fps),
            None => vdit(&[input, output]),
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn png_folder_becomes_mp4_at_16_fps() {
        let video = gradient_video(17, 64, 48);
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("frames");
        write_frames(&folder, &video, fps16());
        let mp4 = dir.path().join("video.mp4");
        let summary = encoded(&folder, &mp4, None);
        println!("{summary}");
        assert!(
            summary.contains("17 frames of 64x48 at 16 fps"),
            "{summary}"
        );
        let back = read_video(&mp4).unwrap();
        assert_eq!(
            (back.frames.len(), back.width, back.height, back.fps),
            (17, 64, 48, fps16())
        );
        let quality = psnr(&video, &back.frames).unwrap();
        println!("encode from PNG: PSNR {quality:.2} dB");
        assert!(quality >= 30.0, "PSNR {quality:.2} dB");
        assert_eq!(names_in(dir.path()), ["frames", "video.mp4"]);
    }

    #[test]
    fn y4m_becomes_mp4_at_its_own_rate_or_the_one_asked() {
        let video = gradient_video(20, 96, 64);
        let dir = tempfile::tempdir().unwrap();
        let y4m = dir.path().join("in.y4m");
        write_frames(&y4m, &video, FrameRate::new(24, 1).unwrap());
        let mp4 = dir.path().join("video.mp4");
        encoded(&y4m, &mp4, None);
        let back = read_video(&mp4).unwrap();
        assert_eq!((back.frames.len(), back.width, back.height), (20, 96, 64));
        assert_eq!(back.fps, FrameRate::new(24, 1).unwrap());
        let quality = psnr(&video, &back.frames).unwrap();
        println!("encode from Y4M: PSNR {quality:.2} dB");
        assert!(quality >= 30.0, "PSNR {quality:.2} dB");

        // An existing output is replaced only when asked.
        let first = std::fs::read(&mp4).unwrap();
        let refused = one_line_error(vdit(&[&y4m, &mp4]));
        assert!(refused.contains("--overwrite"), "{refused}");
        assert_eq!(std::fs::read(&mp4).unwrap(), first);
        encoded(&y4m, &mp4, Some("30000/1001"));
        let back = read_video(&mp4).unwrap();
        assert_eq!(
            (back.frames.len(), back.fps),
            (20, FrameRate::new(30000, 1001).unwrap())
        );
        assert_eq!(names_in(dir.path()), ["in.y4m", "video.mp4"]);
    }
}

#[cfg(not(feature = "ffmpeg"))]
#[test]
fn mp4_without_ffmpeg_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let y4m = dir.path().join("in.y4m");
    write_frames(&y4m, &gradient_video(2, 16, 12), fps16());
    let err = one_line_error(vdit(&[&y4m, &dir.path().join("out.mp4")]));
    assert!(
        err.contains("built without FFmpeg") && err.contains("vdit encode"),
        "{err}"
    );
    assert_eq!(names_in(dir.path()), ["in.y4m"]);
}
