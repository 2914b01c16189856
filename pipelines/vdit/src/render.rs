//! What `generate` and `batch` do with a checked job once the model is loaded: open its video,
//! run it into the video, finish the file and write the record beside it.

use crate::video::{FrameRate, VideoWriter, WrittenVideo};
use anyhow::Result;
use pipelines::t2v::{
    output_bytes, record_path, Job, Loaded, Outcome, Progress, PromptCache, Record,
};
use std::path::Path;
use std::time::Instant;

/// Opens the video writer of `job` at `output` (a temporary name until the video is complete);
/// an existing file there is refused unless `overwrite`, and then replaced only once the new
/// video is complete.
pub fn open_writer(job: &Job, output: &Path, overwrite: bool) -> Result<VideoWriter> {
    let size = job.settings.size;
    let (Ok(width), Ok(height)) = (u32::try_from(size.width), u32::try_from(size.height)) else {
        anyhow::bail!("video size {size} is too large to write");
    };
    Ok(VideoWriter::open_with(
        output,
        width,
        height,
        FrameRate::new(job.settings.fps, 1)?,
        overwrite,
    )?)
}

/// Runs `job` into `writer` (opened at `output`), finishes the video, then writes the record.
pub fn render(
    loaded: &Loaded,
    job: &Job,
    prompts: &PromptCache,
    mut writer: VideoWriter,
    output: &Path,
    progress: &mut dyn Progress,
) -> Result<(Outcome, WrittenVideo)> {
    let mut outcome = loaded.run(job, prompts, &mut writer, progress)?;
    let finishing = Instant::now();
    let video = writer.finish()?;
    outcome.timings.writing_s += finishing.elapsed().as_secs_f64();
    let described = serde_json::json!({
        "path": video.path,
        "bytes": output_bytes(output)?,
        "frames": video.frames,
        "width": video.width,
        "height": video.height,
        "fps": video.fps.to_string(),
        "encoding": video.encoding,
    });
    Record::new(job, &outcome, &loaded.identity, described).save(&record_path(output))?;
    Ok((outcome, video))
}
