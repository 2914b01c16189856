//! The judge: compares what a caption asked for with what the detector reads from the video.

use super::detect::{detect, Detection};
use crate::data::{Caption, Combination, Video};

/// Whether one asked object came out right.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Judgement {
    /// The asked colour is an object in the video; for a one-object caption, the largest one.
    pub colour: bool,
    /// The blob of the asked colour has the asked shape.
    pub shape: bool,
    /// The blob of the asked colour moves in the asked direction.
    pub motion: bool,
}

impl Judgement {
    /// Colour, shape and motion all right.
    pub fn all(&self) -> bool {
        self.colour && self.shape && self.motion
    }
}

/// One judgement per object of `asked`, in caption order, reading `video` on the asked
/// background.
pub fn judge(asked: &Caption, video: &Video) -> Vec<Judgement> {
    judge_detections(asked, &detect(video, asked.background()))
}

/// One judgement per object of `asked` against `detections` (largest first, as
/// [`detect`] gives them).
pub fn judge_detections(asked: &Caption, detections: &[Detection]) -> Vec<Judgement> {
    let single = asked.objects().len() == 1;
    asked
        .objects()
        .iter()
        .map(|object| judge_object(object, detections, single))
        .collect()
}

/// The judgement of one asked object; `single` when it is the caption's only object.
fn judge_object(asked: &Combination, detections: &[Detection], single: bool) -> Judgement {
    let found = detections.iter().find(|d| d.colour == asked.colour);
    let colour = if single {
        detections.first().is_some_and(|d| d.colour == asked.colour)
    } else {
        found.is_some()
    };
    Judgement {
        colour,
        shape: found.and_then(|d| d.shape) == Some(asked.shape),
        motion: found.and_then(|d| d.motion) == Some(asked.motion),
    }
}
