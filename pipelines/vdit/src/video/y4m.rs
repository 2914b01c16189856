//! YUV4MPEG2 (`.y4m`): uncompressed planar video that needs no FFmpeg, for machines without it.
//!
//! vdit writes 4:4:4 (`C444`), BT.601 limited range (`XCOLORRANGE=LIMITED`, see [`super::yuv`]),
//! progressive, square pixels: full chroma, so that `vdit encode` subsamples only once when it
//! makes MP4. It reads 4:4:4 and 8-bit 4:2:0 (`C420`, `C420jpeg`, `C420mpeg2`, `C420paldv`, or
//! no `C` tag), whatever their chroma siting, with each 4:2:0 chroma sample repeated over its 2x2
//! block.

use super::output::FrameSink;
use super::yuv::{rgb_to_yuv, yuv_to_rgb, Chroma, YuvPlanes};
use super::{Frame, FrameRate, VideoError};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use vdit_core::output::PartialOutput;

/// Writes a `.y4m` file frame by frame.
pub(crate) struct Y4mSink {
    file: BufWriter<File>,
    partial: PartialOutput,
}

impl Y4mSink {
    /// Creates the temporary file and writes the stream header.
    pub(crate) fn create(
        path: &Path,
        width: u32,
        height: u32,
        fps: FrameRate,
    ) -> Result<Self, VideoError> {
        let partial = PartialOutput::new(path)?;
        let file = File::create(partial.temp()).map_err(|e| VideoError::write(path, e))?;
        let mut sink = Self {
            file: BufWriter::new(file),
            partial,
        };
        let header = format!(
            "YUV4MPEG2 W{width} H{height} F{}:{} Ip A1:1 C444 XCOLORRANGE=LIMITED\n",
            fps.num(),
            fps.den()
        );
        sink.put(header.as_bytes())?;
        Ok(sink)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), VideoError> {
        self.file
            .write_all(bytes)
            .map_err(|e| VideoError::write(self.partial.target(), e))
    }
}

impl FrameSink for Y4mSink {
    /// The frame's Y'CbCr planes.
    type Prepared = YuvPlanes;

    fn preparer(&self) -> impl Fn(Frame) -> Result<YuvPlanes, VideoError> + Send + 'static {
        |frame| Ok(rgb_to_yuv(&frame, Chroma::Full))
    }

    fn write(&mut self, planes: YuvPlanes) -> Result<(), VideoError> {
        self.put(b"FRAME\n")?;
        for plane in [&planes.y, &planes.cb, &planes.cr] {
            self.put(plane)?;
        }
        Ok(())
    }

    fn finish(self) -> Result<String, VideoError> {
        let Self { file, partial } = self;
        let target = partial.target().to_path_buf();
        let file = file
            .into_inner()
            .map_err(|e| VideoError::write(&target, e.error()))?;
        file.sync_all().map_err(|e| VideoError::write(&target, e))?;
        drop(file);
        partial.commit()?;
        Ok("YUV4MPEG2 4:4:4 (BT.601, limited range)".to_string())
    }
}

/// Reads a `.y4m` file one RGB frame at a time.
pub struct Y4mReader {
    input: BufReader<File>,
    path: PathBuf,
    width: u32,
    height: u32,
    fps: FrameRate,
    chroma: Chroma,
    frames_read: usize,
    done: bool,
}

/// The stream header is one line; anything longer is not a Y4M file.
const MAX_HEADER: u64 = 4096;

impl Y4mReader {
    /// Opens `path` and parses its stream header.
    pub fn open(path: &Path) -> Result<Self, VideoError> {
        let file = File::open(path).map_err(|e| VideoError::read(path, e))?;
        let mut input = BufReader::new(file);
        let header = read_line(&mut input, path)?
            .ok_or_else(|| VideoError::read(path, "the file is empty"))?;
        let fields = header.strip_prefix("YUV4MPEG2 ").ok_or_else(|| {
            VideoError::read(path, "not a YUV4MPEG2 file (no `YUV4MPEG2` header)")
        })?;
        let (mut width, mut height, mut fps) = (None, None, None);
        let mut chroma = Chroma::Quarter;
        for field in fields.split_ascii_whitespace() {
            let (tag, value) = field.split_at(1);
            match tag {
                "W" => width = value.parse::<u32>().ok(),
                "H" => height = value.parse::<u32>().ok(),
                "F" => fps = parse_rate(value),
                "C" => chroma = parse_chroma(value, path)?,
                _ => {}
            }
        }
        let bad =
            |what: &str| VideoError::read(path, format!("the Y4M header has no valid {what}"));
        let width = width.filter(|&w| w > 0).ok_or_else(|| bad("width (W)"))?;
        let height = height.filter(|&h| h > 0).ok_or_else(|| bad("height (H)"))?;
        let fps = fps.ok_or_else(|| bad("frame rate (F)"))?;
        // A frame must fit in the file: a header that claims more is damaged, and reading it
        // would allocate what the header says.
        let (cw, ch) = chroma.plane_size(width as usize, height as usize);
        let frame_bytes = (width as u64)
            .checked_mul(u64::from(height))
            .zip((cw as u64).checked_mul(ch as u64))
            .and_then(|(luma, chroma)| chroma.checked_mul(2)?.checked_add(luma));
        let file_bytes = input.get_ref().metadata().map_or(u64::MAX, |m| m.len());
        if frame_bytes.is_none_or(|bytes| bytes > file_bytes) {
            return Err(VideoError::read(
                path,
                format!(
                    "the Y4M header says {width}x{height} but the file ({file_bytes} bytes) \
                     cannot hold one frame of that size"
                ),
            ));
        }
        Ok(Self {
            input,
            path: path.to_path_buf(),
            width,
            height,
            fps,
            chroma,
            frames_read: 0,
            done: false,
        })
    }

    /// Frame width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Frame height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The frame rate in the header.
    pub fn frame_rate(&self) -> FrameRate {
        self.fps
    }

    fn read_frame(&mut self) -> Result<Option<Frame>, VideoError> {
        let Some(marker) = read_line(&mut self.input, &self.path)? else {
            return Ok(None);
        };
        let index = self.frames_read;
        if !marker.starts_with("FRAME") {
            return Err(VideoError::read(
                &self.path,
                format!("frame {index} does not start with FRAME"),
            ));
        }
        let (w, h) = (self.width as usize, self.height as usize);
        let (cw, ch) = self.chroma.plane_size(w, h);
        let mut plane = |len: usize| {
            let mut bytes = vec![0u8; len];
            self.input
                .read_exact(&mut bytes)
                .map_err(|e| match e.kind() {
                    ErrorKind::UnexpectedEof => {
                        VideoError::read(&self.path, format!("frame {index} is truncated"))
                    }
                    _ => VideoError::read(&self.path, e),
                })?;
            Ok::<_, VideoError>(bytes)
        };
        let planes = YuvPlanes {
            y: plane(w * h)?,
            cb: plane(cw * ch)?,
            cr: plane(cw * ch)?,
        };
        self.frames_read += 1;
        Ok(Some(yuv_to_rgb(
            self.width,
            self.height,
            &planes,
            self.chroma,
        )))
    }
}

impl Iterator for Y4mReader {
    type Item = Result<Frame, VideoError>;

    /// The next frame; after the last frame or an error, `None`.
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let result = self.read_frame().transpose();
        self.done = !matches!(result, Some(Ok(_)));
        result
    }
}

/// One header line without its newline, or `None` at the end of the file.
fn read_line(input: &mut BufReader<File>, path: &Path) -> Result<Option<String>, VideoError> {
    let mut line = Vec::new();
    input
        .by_ref()
        .take(MAX_HEADER)
        .read_until(b'\n', &mut line)
        .map_err(|e| VideoError::read(path, e))?;
    if line.is_empty() {
        return Ok(None);
    }
    if line.pop() != Some(b'\n') {
        return Err(VideoError::read(
            path,
            "a Y4M header line is cut short or too long",
        ));
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| VideoError::read(path, "a Y4M header line is not text"))
}

fn parse_rate(value: &str) -> Option<FrameRate> {
    let (num, den) = value.split_once(':')?;
    FrameRate::new(num.parse().ok()?, den.parse().ok()?).ok()
}

fn parse_chroma(value: &str, path: &Path) -> Result<Chroma, VideoError> {
    match value {
        "444" => Ok(Chroma::Full),
        "420" | "420jpeg" | "420mpeg2" | "420paldv" => Ok(Chroma::Quarter),
        other => Err(VideoError::read(
            path,
            format!("Y4M colour space C{other} is not supported (vdit reads 8-bit C444 and C420)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_raw(path: &Path, header: &str, frames: &[[Vec<u8>; 3]]) {
        let mut bytes = format!("{header}\n").into_bytes();
        for [y, cb, cr] in frames {
            bytes.extend(b"FRAME\n");
            bytes.extend(y.iter().chain(cb).chain(cr));
        }
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn quarter_chroma_reads_as_full_chroma_repeated_over_blocks() {
        // 5x3 (odd) with 3x2 chroma planes; the 4:4:4 twin repeats each chroma sample 2x2.
        let (w, h) = (5usize, 3usize);
        let y: Vec<u8> = (0..w * h).map(|i| (20 + 13 * i) as u8).collect();
        let cb_small: Vec<u8> = vec![60, 128, 200, 90, 150, 240];
        let cr_small: Vec<u8> = vec![230, 100, 16, 128, 70, 180];
        let repeat = |small: &[u8]| -> Vec<u8> {
            (0..h)
                .flat_map(|r| (0..w).map(move |c| (r, c)))
                .map(|(r, c)| small[(r / 2) * 3 + c / 2])
                .collect()
        };
        let dir = tempfile::tempdir().unwrap();
        let quarter = dir.path().join("q.y4m");
        let full = dir.path().join("f.y4m");
        write_raw(
            &quarter,
            "YUV4MPEG2 W5 H3 F25:1 Ip A1:1 C420jpeg",
            &[[y.clone(), cb_small.clone(), cr_small.clone()]],
        );
        write_raw(
            &full,
            "YUV4MPEG2 W5 H3 F25:1 C444",
            &[[y, repeat(&cb_small), repeat(&cr_small)]],
        );
        let read = |p: &Path| {
            Y4mReader::open(p)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        };
        let (q, f) = (read(&quarter), read(&full));
        assert_eq!(q.len(), 1);
        assert_eq!(q, f);
    }

    #[test]
    fn grey_levels_decode_by_the_luma_scale() {
        // With neutral chroma R = G = B = round((Y - 16) * 255 / 219), clamped.
        let levels: Vec<u8> = (0..=255).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grey.y4m");
        write_raw(
            &path,
            "YUV4MPEG2 W256 H1 F16:1 C444",
            &[[levels.clone(), vec![128; 256], vec![128; 256]]],
        );
        let frame = Y4mReader::open(&path).unwrap().next().unwrap().unwrap();
        for (y, rgb) in levels.iter().zip(frame.rgb().chunks(3)) {
            let want = ((f64::from(*y) - 16.0) * 255.0 / 219.0)
                .round()
                .clamp(0.0, 255.0) as u8;
            assert_eq!(rgb, [want; 3], "Y = {y}");
        }
    }

    #[test]
    fn broken_files_give_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.y4m");
        let open_err = |content: &[u8]| {
            std::fs::write(&path, content).unwrap();
            Y4mReader::open(&path)
                .err()
                .expect("open fails")
                .to_string()
        };
        assert!(open_err(b"").contains("empty"));
        assert!(open_err(b"RIFF....\n").contains("not a YUV4MPEG2 file"));
        assert!(open_err(b"YUV4MPEG2 W4 F16:1\n").contains("height (H)"));
        assert!(open_err(b"YUV4MPEG2 W4 H4 F0:1\n").contains("frame rate (F)"));
        assert!(open_err(b"YUV4MPEG2 W4 H4 F16:1 C422\n").contains("C422 is not supported"));
        assert!(open_err(&[b'Y'; 5000]).contains("cut short or too long"));
        std::fs::write(
            &path,
            b"YUV4MPEG2 W2 H2 F16:1 C444\nFRAME\n0123456789ABFRAME\n01",
        )
        .unwrap();
        let results: Vec<_> = Y4mReader::open(&path).unwrap().collect();
        assert_eq!(results.len(), 2, "one frame, then the error, then nothing");
        assert!(results[0].is_ok());
        let err = results[1].as_ref().unwrap_err().to_string();
        assert!(err.contains("frame 1 is truncated"), "{err}");
    }
}
