//! Bad output requests fail with one line and leave nothing behind, and a writer that does not
//! finish removes what it wrote.

mod common;

use common::{fps16, gradient_video, names_in};
use std::path::Path;
use vdit::video::{Frame, VideoError, VideoWriter};

/// Every format: a file per extension and a frame folder.
const OUTPUTS: [&str; 4] = ["out.mp4", "out.gif", "out.y4m", "frames"];

fn one_line(err: VideoError) -> String {
    let text = err.to_string();
    assert_eq!(text.lines().count(), 1, "not one line: {text}");
    text
}

fn open_error(path: &Path, width: u32, height: u32) -> String {
    one_line(
        VideoWriter::open(path, width, height, fps16())
            .err()
            .expect("open fails"),
    )
}

/// True where this build can write the format (MP4 needs FFmpeg).
fn supported(name: &str) -> bool {
    cfg!(feature = "ffmpeg") || !name.ends_with(".mp4")
}

#[test]
fn missing_folder_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for name in OUTPUTS.iter().filter(|n| supported(n)) {
        let path = dir.path().join("no/such").join(name);
        let err = open_error(&path, 64, 48);
        assert!(
            err.contains("does not exist (create it first)") && err.contains("no/such"),
            "{err}"
        );
    }
    assert!(names_in(dir.path()).is_empty());
}

#[test]
fn unknown_extension_lists_the_formats() {
    let dir = tempfile::tempdir().unwrap();
    let err = open_error(&dir.path().join("clip.avi"), 64, 48);
    assert!(
        err.contains("unknown video format `.avi`") && err.contains(".mp4, .gif, .y4m"),
        "{err}"
    );
    assert!(names_in(dir.path()).is_empty());
}

#[test]
fn zero_size_frames_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for name in OUTPUTS {
        for (w, h) in [(0, 48), (64, 0), (0, 0)] {
            let err = open_error(&dir.path().join(name), w, h);
            assert!(err.contains(&format!("{w}x{h} is empty")), "{err}");
        }
    }
    assert!(names_in(dir.path()).is_empty());
}

#[test]
fn size_change_is_refused_and_nothing_is_left_behind() {
    let good = gradient_video(2, 16, 12);
    let other = gradient_video(1, 12, 16);
    let dir = tempfile::tempdir().unwrap();
    for name in OUTPUTS.iter().filter(|n| supported(n)) {
        let path = dir.path().join(name);
        let mut writer = VideoWriter::open(&path, 16, 12, fps16()).unwrap();
        writer.push(&good[0]).unwrap();
        let err = one_line(writer.push(&other[0]).unwrap_err());
        assert!(
            err.contains("frame 1 is 12x16 but") && err.contains("opened for 16x12"),
            "{err}"
        );
        // The writer stays usable after refusing a frame, and its output is still partial.
        writer.push(&good[1]).unwrap();
        let temp = format!(".{name}.vdit-{}.partial", std::process::id());
        assert_eq!(names_in(dir.path()), [temp]);
        drop(writer);
        assert!(
            names_in(dir.path()).is_empty(),
            "{name}: {:?}",
            names_in(dir.path())
        );
    }
}

#[test]
fn finishing_without_frames_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    for name in OUTPUTS.iter().filter(|n| supported(n)) {
        let writer = VideoWriter::open(&dir.path().join(name), 16, 12, fps16()).unwrap();
        let err = one_line(writer.finish().unwrap_err());
        assert!(err.contains("no frames were given"), "{err}");
        assert!(names_in(dir.path()).is_empty());
    }
}

#[test]
fn failed_write_keeps_the_previous_output() {
    // An existing file is refused unless replacing is asked for, and then replaced only by a
    // complete video.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keep.y4m");
    std::fs::write(&path, b"previous").unwrap();
    let err = open_error(&path, 16, 12);
    assert!(
        err.contains("already exists") && err.contains("--overwrite"),
        "{err}"
    );
    let mut writer = VideoWriter::open_with(&path, 16, 12, fps16(), true).unwrap();
    writer.push(&gradient_video(1, 16, 12)[0]).unwrap();
    drop(writer);
    assert_eq!(std::fs::read(&path).unwrap(), b"previous");
    assert_eq!(names_in(dir.path()), ["keep.y4m"]);
}

#[test]
fn occupied_frame_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("frames");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("notes.txt"), b"mine").unwrap();
    let err = open_error(&folder, 16, 12);
    assert!(err.contains("exists and is not empty"), "{err}");
    let file = dir.path().join("plainfile");
    std::fs::write(&file, b"x").unwrap();
    let err = open_error(&file, 16, 12);
    assert!(err.contains("a file of that name exists"), "{err}");
    assert_eq!(names_in(dir.path()), ["frames", "plainfile"]);
    assert_eq!(names_in(&folder), ["notes.txt"]);
}

#[test]
fn frame_buffers_must_match_their_size() {
    let err = one_line(Frame::new(4, 4, vec![0; 47]).unwrap_err());
    assert!(err.contains("needs 48 bytes, got 47"), "{err}");
}

#[cfg(not(feature = "ffmpeg"))]
#[test]
fn mp4_without_ffmpeg_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let err = open_error(&dir.path().join("out.mp4"), 64, 48);
    assert!(
        err.contains("built without FFmpeg") && err.contains("vdit encode"),
        "{err}"
    );
    assert!(names_in(dir.path()).is_empty());
}

#[test]
fn gif_frame_rates_it_cannot_play_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gif");
    for (num, den) in [(60, 1), (1, 1000)] {
        let fps = vdit::video::FrameRate::new(num, den).unwrap();
        let err = one_line(VideoWriter::open(&path, 8, 6, fps).err().expect("refused"));
        assert!(
            err.contains("GIF cannot play") && err.contains(".mp4"),
            "{err}"
        );
    }
    assert!(names_in(dir.path()).is_empty());
    // 50 fps (2 cs per frame) is the fastest rate GIF players honour.
    let fifty = vdit::video::FrameRate::new(50, 1).unwrap();
    let mut writer = VideoWriter::open(&path, 8, 6, fifty).unwrap();
    writer.push(&gradient_video(1, 8, 6)[0]).unwrap();
    writer.finish().unwrap();
}
