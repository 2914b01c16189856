//! Every writer's output read back: frame count, size, frame rate and fidelity against the
//! frames written, and nothing but the output left in the folder.
//!
//! Fidelity bounds: PNG is exact; Y4M (4:4:4, 8-bit BT.601) differs by at most 2 levels per
//! channel; MP4 (H.264 CRF 18, 4:2:0) must reach PSNR 30 dB. GIF's NeuQuant palette (256
//! colours per frame, no dithering) bands smooth gradients: it must reach only 20 dB on them,
//! and frames of at most 256 colours must come back exact. Run with `--nocapture` to see the
//! measured PSNRs.

mod common;

use common::{fps16, gradient_tensor, gradient_video, max_difference, names_in};
use image::AnimationDecoder;
use std::path::Path;
use vdit::video::{psnr, Frame, FrameRate, PngFolderReader, VideoWriter, Y4mReader};

const FRAMES: usize = 25;
const WIDTH: usize = 64;
const HEIGHT: usize = 48;

fn write_all(path: &Path, frames: &[Frame], fps: FrameRate) -> String {
    let mut writer = VideoWriter::open(path, frames[0].width(), frames[0].height(), fps).unwrap();
    for frame in frames {
        writer.push(frame).unwrap();
    }
    let written = writer.finish().unwrap();
    assert_eq!(written.frames, frames.len());
    println!("{written}");
    written.encoding
}

#[test]
fn png_folder_is_exact() {
    let video = gradient_video(FRAMES, WIDTH, HEIGHT);
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("frames");
    write_all(&folder, &video, fps16());
    assert_eq!(names_in(dir.path()), ["frames"]);
    let names = names_in(&folder);
    assert_eq!(names.len(), FRAMES);
    assert_eq!(
        (names[0].as_str(), names[24].as_str()),
        ("frame_00000.png", "frame_00024.png")
    );
    let reader = PngFolderReader::open(&folder).unwrap();
    assert_eq!(
        (reader.width(), reader.height()),
        (WIDTH as u32, HEIGHT as u32)
    );
    let back: Vec<Frame> = reader.collect::<Result<_, _>>().unwrap();
    assert_eq!(back, video);
}

#[test]
fn tensor_chunks_stream_into_one_video() {
    // As the VAE decodes: a [1, 3, T, H, W] chunk at a time, in bf16.
    let video = gradient_tensor(FRAMES, WIDTH, HEIGHT);
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("frames");
    let mut writer = VideoWriter::open(&folder, WIDTH as u32, HEIGHT as u32, fps16()).unwrap();
    for (start, len) in [(0, 1), (1, 16), (17, 8)] {
        let chunk = video.narrow(2, start, len).unwrap();
        let chunk = chunk.to_dtype(candle_core::DType::BF16).unwrap();
        assert_eq!(writer.push_tensor(&chunk).unwrap(), len);
    }
    assert_eq!(writer.finish().unwrap().frames, FRAMES);
    let back: Vec<Frame> = PngFolderReader::open(&folder)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    // bf16 keeps 8 significant bits, so a level may move by one.
    assert!(max_difference(&back, &gradient_video(FRAMES, WIDTH, HEIGHT)) <= 1);
}

#[test]
fn png_folder_path_with_trailing_slash_and_empty_target() {
    let video = gradient_video(3, 8, 6);
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("out.v1");
    std::fs::create_dir(&folder).unwrap();
    let with_slash = format!("{}/", folder.display());
    write_all(Path::new(&with_slash), &video, fps16());
    assert_eq!(names_in(dir.path()), ["out.v1"]);
    assert_eq!(names_in(&folder).len(), 3);
}

#[test]
fn y4m_is_near_exact() {
    let video = gradient_video(FRAMES, WIDTH, HEIGHT);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("video.y4m");
    let ntsc = FrameRate::new(30000, 1001).unwrap();
    write_all(&path, &video, ntsc);
    assert_eq!(names_in(dir.path()), ["video.y4m"]);
    let header = std::fs::read(&path).unwrap();
    assert!(header.starts_with(b"YUV4MPEG2 W64 H48 F30000:1001 Ip A1:1 C444 XCOLORRANGE=LIMITED\n"));
    let reader = Y4mReader::open(&path).unwrap();
    assert_eq!(
        (reader.width(), reader.height(), reader.frame_rate()),
        (64, 48, ntsc)
    );
    let back: Vec<Frame> = reader.collect::<Result<_, _>>().unwrap();
    assert_eq!(back.len(), FRAMES);
    let (worst, quality) = (max_difference(&video, &back), psnr(&video, &back).unwrap());
    println!("y4m: PSNR {quality:.2} dB, largest difference {worst} levels");
    assert!(worst <= 2, "largest difference {worst} levels");
    assert!(quality >= 45.0, "PSNR {quality:.2} dB");
}

#[test]
fn gif_has_every_frame_and_tracks_the_frame_rate() {
    let video = gradient_video(FRAMES, WIDTH, HEIGHT);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("video.GIF");
    write_all(&path, &video, fps16());
    assert_eq!(names_in(dir.path()), ["video.GIF"]);
    let (back, delays_ms) = read_gif(&path);
    assert_eq!(back.len(), FRAMES);
    let mut elapsed_ms = 0u32;
    for (n, ms) in delays_ms.into_iter().enumerate() {
        assert!(ms == 60 || ms == 70, "frame {n} lasts {ms} ms");
        elapsed_ms += ms;
        // At 16 fps frame n + 1 starts at 62.5 (n + 1) ms; whole centiseconds allow 5 ms off.
        let exact = 62.5 * (n + 1) as f64;
        assert!(
            (f64::from(elapsed_ms) - exact).abs() <= 5.0,
            "frame {n} ends at {elapsed_ms} ms"
        );
    }
    let quality = psnr(&video, &back).unwrap();
    println!("gif: PSNR {quality:.2} dB");
    assert!(quality >= 20.0, "PSNR {quality:.2} dB");
}

/// The frames of a GIF as RGB and how long each lasts in milliseconds.
fn read_gif(path: &Path) -> (Vec<Frame>, Vec<u32>) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    image::codecs::gif::GifDecoder::new(file)
        .unwrap()
        .into_frames()
        .map(|f| {
            let f = f.unwrap();
            let (ms, denominator) = f.delay().numer_denom_ms();
            assert_eq!(denominator, 1, "delays are whole milliseconds");
            let rgba = f.into_buffer();
            let (w, h) = rgba.dimensions();
            let rgb = rgba.pixels().flat_map(|p| [p[0], p[1], p[2]]).collect();
            (Frame::new(w, h, rgb).unwrap(), ms)
        })
        .unzip()
}

#[test]
fn gif_of_few_colours_is_exact() {
    // Each frame holds 200 colours, fewer than a palette's 256, and they move between frames.
    let (w, h) = (20u32, 10u32);
    let video: Vec<Frame> = (0..7u32)
        .map(|t| {
            let rgb = (0..w * h)
                .flat_map(|i| {
                    let c = (i + 13 * t) % 200;
                    [(c * 37 % 256) as u8, (c * 101 % 256) as u8, (255 - c) as u8]
                })
                .collect();
            Frame::new(w, h, rgb).unwrap()
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("few.gif");
    write_all(&path, &video, FrameRate::new(10, 1).unwrap());
    let (back, delays_ms) = read_gif(&path);
    assert_eq!(back, video);
    assert_eq!(delays_ms, [100; 7]);
}

#[cfg(feature = "ffmpeg")]
mod mp4 {
    use super::*;
    use vdit::video::read_video;

    #[test]
    fn mp4_reads_back_with_the_right_frames_and_times() {
        let video = gradient_video(FRAMES, WIDTH, HEIGHT);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("video.mp4");
        let encoding = write_all(&path, &video, fps16());
        assert_eq!(names_in(dir.path()), ["video.mp4"]);
        let back = read_video(&path).unwrap();
        assert_eq!(back.frames.len(), FRAMES);
        assert_eq!((back.width, back.height, back.fps), (64, 48, fps16()));
        for (n, time) in back.times.iter().enumerate() {
            assert!(
                (time - n as f64 / 16.0).abs() < 1e-3,
                "frame {n} at {time} s"
            );
        }
        let quality = psnr(&video, &back.frames).unwrap();
        println!(
            "mp4 ({encoding}, decoded by {}): PSNR {quality:.2} dB",
            back.codec
        );
        assert!(quality >= 30.0, "PSNR {quality:.2} dB");
        if encoding.starts_with("H.264") {
            assert_eq!(back.codec, "h264");
        }
    }

    #[test]
    fn ffmpeg_reads_our_y4m_colours_the_same_way() {
        // FFmpeg's own Y4M demuxer and colour conversion are an independent reading of the
        // BT.601 limited-range coding vdit writes.
        let video = gradient_video(9, WIDTH, HEIGHT);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("video.y4m");
        write_all(&path, &video, fps16());
        let back = read_video(&path).unwrap();
        assert_eq!((back.frames.len(), back.fps), (9, fps16()));
        let quality = psnr(&video, &back.frames).unwrap();
        println!("y4m decoded by FFmpeg: PSNR {quality:.2} dB");
        assert!(quality >= 40.0, "PSNR {quality:.2} dB");
    }

    #[test]
    fn odd_sizes_are_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd.mp4");
        let err = VideoWriter::open(&path, 65, 48, fps16())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("even width and height, got 65x48"), "{err}");
        assert_eq!(err.lines().count(), 1);
        assert!(names_in(dir.path()).is_empty());
    }
}
