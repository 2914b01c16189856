//! The named colours of the procedural videos, chosen far apart in RGB so that a pixel's nearest
//! named colour survives noise and blur.

use std::fmt;

/// A named colour: six for objects, plus black and gray for backgrounds only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Colour {
    /// sRGB (220, 40, 40).
    Red,
    /// sRGB (40, 190, 60).
    Green,
    /// sRGB (40, 90, 240).
    Blue,
    /// sRGB (240, 220, 40).
    Yellow,
    /// sRGB (245, 245, 245).
    White,
    /// sRGB (150, 40, 200).
    Purple,
    /// sRGB (0, 0, 0): background only, and the background when a caption names none.
    Black,
    /// sRGB (128, 128, 128): background only.
    Gray,
}

impl Colour {
    /// Every colour an object can have.
    pub const OBJECT: [Colour; 6] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::White,
        Colour::Purple,
    ];

    /// Every colour a background can have: black, gray, and the object colours.
    pub const BACKGROUND: [Colour; 8] = [
        Colour::Black,
        Colour::Gray,
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::White,
        Colour::Purple,
    ];

    /// The word for this colour in captions.
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::White => "white",
            Colour::Purple => "purple",
            Colour::Black => "black",
            Colour::Gray => "gray",
        }
    }

    /// The colour named by a lower-case caption word.
    pub fn from_name(word: &str) -> Option<Colour> {
        Colour::BACKGROUND.into_iter().find(|c| c.name() == word)
    }

    /// The sRGB value drawn for this colour.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Green => [40, 190, 60],
            Colour::Blue => [40, 90, 240],
            Colour::Yellow => [240, 220, 40],
            Colour::White => [245, 245, 245],
            Colour::Purple => [150, 40, 200],
            Colour::Black => [0, 0, 0],
            Colour::Gray => [128, 128, 128],
        }
    }

    /// Whether an object can have this colour (black and gray are backgrounds only).
    pub fn is_object_colour(self) -> bool {
        Colour::OBJECT.contains(&self)
    }
}

impl fmt::Display for Colour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pair of colours is at least 110 apart in RGB (noise of +-30 per channel moves a
    /// pixel at most 52), and every name reads back to its colour.
    #[test]
    fn colours_are_far_apart_and_named_once() {
        for (i, a) in Colour::BACKGROUND.iter().enumerate() {
            assert_eq!(Colour::from_name(a.name()), Some(*a));
            for b in &Colour::BACKGROUND[i + 1..] {
                let squared: i32 = a
                    .rgb()
                    .iter()
                    .zip(b.rgb())
                    .map(|(&x, y)| (i32::from(x) - i32::from(y)).pow(2))
                    .sum();
                assert!(squared >= 110 * 110, "{a} and {b} are too close");
            }
        }
        assert_eq!(Colour::from_name("grey"), None);
    }
}
