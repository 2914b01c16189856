//! MP4 through FFmpeg (ffmpeg-next), and reading any video FFmpeg decodes.
//!
//! The writer encodes H.264 with libx264 (CRF 18, preset fast: on `vdit bench write`'s clip a
//! quarter faster than `medium`, its file 3 % smaller) when the linked FFmpeg has it,
//! else MPEG-4 Part 2 with FFmpeg's own `mpeg4` encoder (fixed quantiser 2), and says which in
//! its summary. Frames become BT.601 limited-range 4:2:0 (yuv420p, see [`super::yuv`]) and the
//! stream is tagged so; 4:2:0 has one chroma sample per 2x2 block, so width and height must be
//! even and odd sizes are refused before anything is written. Frame `i` has timestamp `i` in a
//! time base of `1 / fps`, rescaled to the stream's.

use super::output::FrameSink;
use super::yuv::{rgb_to_yuv, Chroma, YuvPlanes};
use super::{Frame, FrameRate, VideoError};
use ffmpeg::codec::{self, encoder};
use ffmpeg::format::{self, Pixel};
use ffmpeg::software::scaling;
use ffmpeg::util::{color, frame};
use ffmpeg::{Dictionary, Packet, Rational};
use ffmpeg_next as ffmpeg;
use std::path::{Path, PathBuf};
use vdit_core::output::PartialOutput;

/// FFmpeg's `FF_QP2LAMBDA`: one quantiser step in `global_quality` units.
const QP_TO_LAMBDA: i32 = 118;

/// A video encoder vdit can put in MP4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mp4Codec {
    /// H.264 through libx264.
    H264,
    /// MPEG-4 Part 2 through FFmpeg's built-in encoder, present in every FFmpeg build.
    Mpeg4,
}

/// Encoders in order of preference.
const PREFERENCE: [Mp4Codec; 2] = [Mp4Codec::H264, Mp4Codec::Mpeg4];

impl Mp4Codec {
    fn encoder_name(self) -> &'static str {
        match self {
            Mp4Codec::H264 => "libx264",
            Mp4Codec::Mpeg4 => "mpeg4",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Mp4Codec::H264 => "H.264 (libx264, yuv420p, CRF 18)",
            Mp4Codec::Mpeg4 => "MPEG-4 Part 2 (mpeg4, yuv420p, quantiser 2)",
        }
    }

    /// Applies the codec's quality settings and returns its private options.
    fn configure(
        self,
        encoder: &mut encoder::video::Video,
        flags: codec::Flags,
    ) -> Dictionary<'static> {
        let mut options = Dictionary::new();
        match self {
            Mp4Codec::H264 => {
                encoder.set_flags(flags);
                options.set("crf", "18");
                options.set("preset", "fast");
            }
            Mp4Codec::Mpeg4 => {
                encoder.set_flags(flags | codec::Flags::QSCALE);
                encoder.set_global_quality(2 * QP_TO_LAMBDA);
            }
        }
        options
    }
}

/// Starts FFmpeg once with its own log silenced (vdit reports FFmpeg's failures in its own
/// one-line errors); `VDIT_FFMPEG_LOG=1` shows FFmpeg's log for debugging.
fn init() -> Result<(), ffmpeg::Error> {
    static LOG_LEVEL: std::sync::Once = std::sync::Once::new();
    ffmpeg::init()?;
    LOG_LEVEL.call_once(|| {
        let level = if std::env::var_os("VDIT_FFMPEG_LOG").is_some() {
            ffmpeg::util::log::Level::Info
        } else {
            ffmpeg::util::log::Level::Quiet
        };
        ffmpeg::util::log::set_level(level);
    });
    Ok(())
}

/// Writes an MP4 file frame by frame.
pub(crate) struct Mp4Sink {
    output: format::context::Output,
    encoder: encoder::video::Encoder,
    encoder_time_base: Rational,
    stream_time_base: Rational,
    frames: i64,
    encoding: String,
    partial: PartialOutput,
}

impl Mp4Sink {
    /// Opens the best encoder the linked FFmpeg has and writes the MP4 header.
    pub(crate) fn create(
        path: &Path,
        width: u32,
        height: u32,
        fps: FrameRate,
    ) -> Result<Self, VideoError> {
        Self::create_with(path, width, height, fps, &PREFERENCE)
    }

    /// As [`Mp4Sink::create`], with the first available encoder of `candidates`.
    pub(crate) fn create_with(
        path: &Path,
        width: u32,
        height: u32,
        fps: FrameRate,
        candidates: &[Mp4Codec],
    ) -> Result<Self, VideoError> {
        if width % 2 == 1 || height % 2 == 1 {
            return Err(VideoError::write(
                path,
                format!(
                    "MP4 (yuv420p) needs an even width and height, got {width}x{height}: crop or \
                     pad the frames, or write .y4m or PNG frames instead"
                ),
            ));
        }
        let (Ok(rate_num), Ok(rate_den)) = (i32::try_from(fps.num()), i32::try_from(fps.den()))
        else {
            return Err(VideoError::write(
                path,
                format!("frame rate {fps} is too large for MP4"),
            ));
        };
        let ffmpeg_error = |step: &str| {
            let step = step.to_string();
            move |e: ffmpeg::Error| VideoError::write(path, format!("FFmpeg could not {step}: {e}"))
        };
        init().map_err(ffmpeg_error("start"))?;
        let (choice, codec) = candidates
            .iter()
            .find_map(|&c| encoder::find_by_name(c.encoder_name()).map(|codec| (c, codec)))
            .ok_or_else(|| {
                let names: Vec<&str> = candidates.iter().map(|c| c.encoder_name()).collect();
                VideoError::write(
                    path,
                    format!("the linked FFmpeg has no {} encoder", names.join(" or ")),
                )
            })?;
        let mut encoding = choice.description().to_string();
        if choice != candidates[0] {
            encoding.push_str(&format!(
                "; fallback because the linked FFmpeg has no {}",
                candidates[0].encoder_name()
            ));
        }

        let partial = PartialOutput::new(path)?;
        let mut output =
            format::output_as(partial.temp(), "mp4").map_err(ffmpeg_error("create the file"))?;
        let flags = if output
            .format()
            .flags()
            .contains(format::Flags::GLOBAL_HEADER)
        {
            codec::Flags::GLOBAL_HEADER
        } else {
            codec::Flags::empty()
        };
        let encoder_time_base = Rational::new(rate_den, rate_num);
        let mut setup = codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(ffmpeg_error("set up the encoder"))?;
        setup.set_width(width);
        setup.set_height(height);
        setup.set_format(Pixel::YUV420P);
        setup.set_time_base(encoder_time_base);
        setup.set_frame_rate(Some(Rational::new(rate_num, rate_den)));
        setup.set_colorspace(color::Space::SMPTE170M);
        setup.set_color_range(color::Range::MPEG);
        let options = choice.configure(&mut setup, flags);
        let encoder = setup.open_with(options).map_err(ffmpeg_error(&format!(
            "open the {} encoder",
            choice.encoder_name()
        )))?;
        {
            let mut stream = output
                .add_stream(codec)
                .map_err(ffmpeg_error("add a stream"))?;
            stream.set_parameters(&encoder);
            stream.set_time_base(encoder_time_base);
            stream.set_avg_frame_rate(Rational::new(rate_num, rate_den));
        }
        // `faststart` moves the index to the front when the file is complete, so that players
        // can start before the whole file has arrived.
        let mut muxer_options = Dictionary::new();
        muxer_options.set("movflags", "+faststart");
        output
            .write_header_with(muxer_options)
            .map_err(ffmpeg_error("write the MP4 header"))?;
        let stream_time_base = output
            .stream(0)
            .map(|s| s.time_base())
            .ok_or_else(|| VideoError::write(path, "FFmpeg lost the video stream"))?;
        Ok(Self {
            output,
            encoder,
            encoder_time_base,
            stream_time_base,
            frames: 0,
            encoding,
            partial,
        })
    }

    fn ffmpeg_error(&self, step: &str, e: ffmpeg::Error) -> VideoError {
        VideoError::write(
            self.partial.target(),
            format!("FFmpeg could not {step}: {e}"),
        )
    }

    /// Moves every packet the encoder has ready into the file.
    fn drain(&mut self) -> Result<(), VideoError> {
        let mut packet = Packet::empty();
        loop {
            match self.encoder.receive_packet(&mut packet) {
                Ok(()) => {}
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::util::error::EAGAIN => {
                    return Ok(())
                }
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(e) => return Err(self.ffmpeg_error("encode", e)),
            }
            packet.set_stream(0);
            if packet.duration() == 0 {
                packet.set_duration(1);
            }
            packet.rescale_ts(self.encoder_time_base, self.stream_time_base);
            packet
                .write_interleaved(&mut self.output)
                .map_err(|e| self.ffmpeg_error("write a packet", e))?;
        }
    }
}

impl FrameSink for Mp4Sink {
    /// The frame's Y'CbCr 4:2:0 planes.
    type Prepared = YuvPlanes;

    fn preparer(&self) -> impl Fn(Frame) -> Result<YuvPlanes, VideoError> + Send + 'static {
        |frame| Ok(rgb_to_yuv(&frame, Chroma::Quarter))
    }

    fn write(&mut self, planes: YuvPlanes) -> Result<(), VideoError> {
        let (w, h) = (self.encoder.width(), self.encoder.height());
        // A fresh picture each time: the encoder may keep a reference to the last one.
        let mut picture = frame::Video::new(Pixel::YUV420P, w, h);
        let (cw, _) = Chroma::Quarter.plane_size(w as usize, h as usize);
        for (index, (plane, row_len)) in
            [(&planes.y, w as usize), (&planes.cb, cw), (&planes.cr, cw)]
                .into_iter()
                .enumerate()
        {
            let stride = picture.stride(index);
            let data = picture.data_mut(index);
            for (row, pixels) in plane.chunks_exact(row_len).enumerate() {
                data[row * stride..row * stride + row_len].copy_from_slice(pixels);
            }
        }
        picture.set_color_space(color::Space::SMPTE170M);
        picture.set_color_range(color::Range::MPEG);
        picture.set_pts(Some(self.frames));
        self.encoder
            .send_frame(&picture)
            .map_err(|e| self.ffmpeg_error("encode", e))?;
        self.frames += 1;
        self.drain()
    }

    fn finish(mut self) -> Result<String, VideoError> {
        self.encoder
            .send_eof()
            .map_err(|e| self.ffmpeg_error("flush the encoder", e))?;
        self.drain()?;
        self.output
            .write_trailer()
            .map_err(|e| self.ffmpeg_error("write the MP4 trailer", e))?;
        let Self {
            output,
            encoding,
            partial,
            ..
        } = self;
        // Closing the file before it is renamed into place.
        drop(output);
        partial.commit()?;
        Ok(encoding)
    }
}

/// A video read back through FFmpeg.
#[derive(Debug, Clone)]
pub struct DecodedVideo {
    /// Name of the FFmpeg decoder used, e.g. `h264`.
    pub codec: String,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// The stream's average frame rate.
    pub fps: FrameRate,
    /// Presentation time of each frame in seconds, in decoding output order.
    pub times: Vec<f64>,
    /// The frames as RGB.
    pub frames: Vec<Frame>,
}

/// Decodes the best video stream of any file FFmpeg reads (MP4, Y4M, ...) into RGB frames.
pub fn read_video(path: &Path) -> Result<DecodedVideo, VideoError> {
    let ffmpeg_error = |step: &'static str| {
        move |e: ffmpeg::Error| VideoError::read(path, format!("FFmpeg could not {step}: {e}"))
    };
    init().map_err(ffmpeg_error("start"))?;
    let mut input = format::input(path).map_err(ffmpeg_error("open the file"))?;
    let (index, time_base, rate, parameters) = {
        let stream = input
            .streams()
            .best(ffmpeg::media::Type::Video)
            .ok_or_else(|| VideoError::read(path, "the file has no video stream"))?;
        let rate = Some(stream.avg_frame_rate())
            .filter(|r| r.numerator() > 0 && r.denominator() > 0)
            .unwrap_or(stream.rate());
        (
            stream.index(),
            stream.time_base(),
            rate,
            stream.parameters(),
        )
    };
    let fps = FrameRate::new(
        rate.numerator().max(0) as u32,
        rate.denominator().max(0) as u32,
    )
    .map_err(|_| VideoError::read(path, "the video stream has no frame rate"))?;
    let mut decoder = codec::context::Context::from_parameters(parameters)
        .and_then(|c| c.decoder().video())
        .map_err(ffmpeg_error("open a decoder"))?;
    let codec = decoder
        .codec()
        .map(|c| c.name().to_string())
        .unwrap_or_default();
    let mut reader = FrameCollector {
        path: path.to_path_buf(),
        time_base,
        scaler: None,
        times: Vec::new(),
        frames: Vec::new(),
    };
    for (stream, packet) in input.packets() {
        if stream.index() == index {
            decoder
                .send_packet(&packet)
                .map_err(ffmpeg_error("decode"))?;
            reader.receive(&mut decoder)?;
        }
    }
    decoder.send_eof().map_err(ffmpeg_error("decode"))?;
    reader.receive(&mut decoder)?;
    Ok(DecodedVideo {
        codec,
        width: decoder.width(),
        height: decoder.height(),
        fps,
        times: reader.times,
        frames: reader.frames,
    })
}

/// Turns decoded pictures into RGB frames with FFmpeg's own colour conversion.
struct FrameCollector {
    path: PathBuf,
    time_base: Rational,
    scaler: Option<scaling::Context>,
    times: Vec<f64>,
    frames: Vec<Frame>,
}

impl FrameCollector {
    /// Takes every picture the decoder has ready.
    fn receive(&mut self, decoder: &mut ffmpeg::decoder::Video) -> Result<(), VideoError> {
        let mut decoded = frame::Video::empty();
        while decoder.receive_frame(&mut decoded).is_ok() {
            let (w, h) = (decoded.width(), decoded.height());
            let fail = |e: ffmpeg::Error| {
                VideoError::read(&self.path, format!("FFmpeg could not convert to RGB: {e}"))
            };
            if self.scaler.is_none() {
                let flags = scaling::Flags::BILINEAR
                    | scaling::Flags::ACCURATE_RND
                    | scaling::Flags::FULL_CHR_H_INT;
                self.scaler = Some(
                    scaling::Context::get(decoded.format(), w, h, Pixel::RGB24, w, h, flags)
                        .map_err(fail)?,
                );
            }
            let mut rgb = frame::Video::empty();
            if let Some(scaler) = self.scaler.as_mut() {
                scaler.run(&decoded, &mut rgb).map_err(fail)?;
            }
            let stride = rgb.stride(0);
            let row_len = w as usize * 3;
            let pixels = (0..h as usize)
                .flat_map(|row| &rgb.data(0)[row * stride..row * stride + row_len])
                .copied()
                .collect();
            self.frames.push(Frame::new(w, h, pixels)?);
            let timestamp = decoded.timestamp().unwrap_or(0);
            self.times
                .push(timestamp as f64 * f64::from(self.time_base));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::psnr;

    #[test]
    fn fallback_codec_round_trips() {
        // mpeg4 is FFmpeg's own encoder, so this runs wherever the `ffmpeg` feature builds.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fallback.mp4");
        let fps = FrameRate::new(16, 1).unwrap();
        let (w, h) = (32u32, 24u32);
        let frames: Vec<Frame> = (0..6)
            .map(|t| {
                let rgb = (0..h * w)
                    .flat_map(|i| {
                        let (y, x) = (i / w, i % w);
                        [(x * 6 + t * 4) as u8, (y * 9) as u8, (100 + t * 20) as u8]
                    })
                    .collect();
                Frame::new(w, h, rgb).unwrap()
            })
            .collect();
        let mut sink = Mp4Sink::create_with(&path, w, h, fps, &[Mp4Codec::Mpeg4]).unwrap();
        let prepare = sink.preparer();
        for f in &frames {
            sink.write(prepare(f.clone()).unwrap()).unwrap();
        }
        let encoding = sink.finish().unwrap();
        assert!(encoding.starts_with("MPEG-4 Part 2"), "{encoding}");
        let back = read_video(&path).unwrap();
        assert_eq!(back.codec, "mpeg4");
        assert_eq!((back.width, back.height, back.fps), (w, h, fps));
        assert_eq!(back.frames.len(), frames.len());
        let quality = psnr(&frames, &back.frames).unwrap();
        println!("mpeg4 fallback PSNR {quality:.2} dB");
        assert!(quality >= 30.0, "mpeg4 PSNR {quality:.2} dB");
    }
}
