//! Evaluation by reading pixels: which object colours a video shows, with what shape and which
//! way they move, judged against the caption that asked for the video.
//!
//! - [`detect`](mod@detect): per object colour, the largest solid blob in every frame, its shape and motion.
//! - [`judge`](mod@judge): per asked object, whether its colour, shape and motion came out right.
//! - [`accuracy`]: counts of judgements and their rates.
//! - [`prompts`]: the distinct captions an evaluation asks for.

pub mod accuracy;
mod blob;
pub mod detect;
pub mod judge;
pub mod prompts;

pub use accuracy::Accuracy;
pub use detect::{detect, Detection, MAX_COLOUR_DISTANCE, MIN_AREA_FRACTION, MIN_DISPLACEMENT};
pub use judge::{judge, judge_detections, Judgement};
pub use prompts::eval_captions;
