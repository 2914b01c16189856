//! Counting judgements into accuracies.

use std::fmt;

use super::judge::Judgement;

/// How many asked objects were judged, and how many had each part right.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Accuracy {
    /// Asked objects judged.
    pub judged: usize,
    /// With the right colour.
    pub colour: usize,
    /// With the right shape.
    pub shape: usize,
    /// With the right motion.
    pub motion: usize,
    /// With colour, shape and motion all right.
    pub all: usize,
}

impl Accuracy {
    /// Counts one judgement.
    pub fn add(&mut self, judgement: &Judgement) {
        self.judged += 1;
        self.colour += usize::from(judgement.colour);
        self.shape += usize::from(judgement.shape);
        self.motion += usize::from(judgement.motion);
        self.all += usize::from(judgement.all());
    }

    /// Share of judged objects with the right colour; `None` before any judgement.
    pub fn colour_rate(&self) -> Option<f64> {
        self.rate(self.colour)
    }

    /// Share of judged objects with the right shape; `None` before any judgement.
    pub fn shape_rate(&self) -> Option<f64> {
        self.rate(self.shape)
    }

    /// Share of judged objects with the right motion; `None` before any judgement.
    pub fn motion_rate(&self) -> Option<f64> {
        self.rate(self.motion)
    }

    /// Share of judged objects with all three right; `None` before any judgement.
    pub fn all_rate(&self) -> Option<f64> {
        self.rate(self.all)
    }

    /// `count` as a share of the judged objects.
    fn rate(&self, count: usize) -> Option<f64> {
        (self.judged > 0).then(|| count as f64 / self.judged as f64)
    }
}

impl<'a> Extend<&'a Judgement> for Accuracy {
    fn extend<I: IntoIterator<Item = &'a Judgement>>(&mut self, judgements: I) {
        for judgement in judgements {
            self.add(judgement);
        }
    }
}

impl fmt::Display for Accuracy {
    /// `colour 9/10 (90.0%), shape ..., motion ..., all ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            ("colour", self.colour),
            ("shape", self.shape),
            ("motion", self.motion),
            ("all", self.all),
        ];
        for (i, (name, count)) in parts.into_iter().enumerate() {
            let joint = if i == 0 { "" } else { ", " };
            write!(f, "{joint}{name} {count}/{}", self.judged)?;
            if let Some(rate) = self.rate(count) {
                write!(f, " ({:.1}%)", 100.0 * rate)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts and rates follow the judgements; nothing judged gives no rate.
    #[test]
    fn counts_and_rates() {
        let mut accuracy = Accuracy::default();
        assert_eq!(accuracy.all_rate(), None);
        let right = Judgement {
            colour: true,
            shape: true,
            motion: true,
        };
        let wrong_motion = Judgement {
            motion: false,
            ..right
        };
        let wrong_colour = Judgement {
            colour: false,
            ..right
        };
        accuracy.extend(&[right, wrong_motion, wrong_colour, right]);
        assert_eq!(
            accuracy,
            Accuracy {
                judged: 4,
                colour: 3,
                shape: 4,
                motion: 3,
                all: 2
            }
        );
        assert_eq!(accuracy.colour_rate(), Some(0.75));
        assert_eq!(accuracy.shape_rate(), Some(1.0));
        assert_eq!(accuracy.motion_rate(), Some(0.75));
        assert_eq!(accuracy.all_rate(), Some(0.5));
        assert_eq!(
            accuracy.to_string(),
            "colour 3/4 (75.0%), shape 4/4 (100.0%), motion 3/4 (75.0%), all 2/4 (50.0%)"
        );
    }
}
