//! Which colour x shape x motion combinations training sees, and which are held out to test
//! generalisation to unseen combinations of seen words.

use super::palette::Colour;
use super::scene::{Motion, Shape};

/// One object's words: its colour, shape and motion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Combination {
    /// The object's colour (an object colour, never black or gray).
    pub colour: Colour,
    /// The object's shape.
    pub shape: Shape,
    /// The object's motion.
    pub motion: Motion,
}

impl Combination {
    /// Every combination of an object colour, a shape and a motion (6 x 3 x 4 = 72), colour-major.
    pub fn all() -> impl Iterator<Item = Combination> {
        Colour::OBJECT.into_iter().flat_map(|colour| {
            Shape::ALL.into_iter().flat_map(move |shape| {
                Motion::ALL.into_iter().map(move |motion| Combination {
                    colour,
                    shape,
                    motion,
                })
            })
        })
    }

    /// Whether this combination is held out of training.
    pub fn is_held_out(&self) -> bool {
        HELD_OUT.contains(self)
    }
}

/// Which scenes to sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// Scenes of one or two objects, none of them a held-out combination.
    Train,
    /// Scenes of one object whose combination is held out.
    Held,
}

/// The held-out combinations. Each colour, shape and motion appears here at most three times,
/// and no two entries share a colour-shape, colour-motion or shape-motion pair, so training sees
/// every word and every pair of words; only these exact triples are new at evaluation.
const HELD_OUT: [Combination; 8] = [
    held(Colour::Red, Shape::Triangle, Motion::Left),
    held(Colour::Green, Shape::Circle, Motion::Up),
    held(Colour::Blue, Shape::Square, Motion::Right),
    held(Colour::Yellow, Shape::Triangle, Motion::Down),
    held(Colour::White, Shape::Circle, Motion::Left),
    held(Colour::Purple, Shape::Square, Motion::Down),
    held(Colour::Blue, Shape::Triangle, Motion::Up),
    held(Colour::Yellow, Shape::Circle, Motion::Right),
];

/// A combination in the held-out table.
const fn held(colour: Colour, shape: Shape, motion: Motion) -> Combination {
    Combination {
        colour,
        shape,
        motion,
    }
}

/// The combinations held out of training, 8 of the 72 (about 11%): a red triangle moving
/// left, a green circle moving up, a blue square moving right, a yellow triangle moving down, a
/// white circle moving left, a purple square moving down, a blue triangle moving up and a yellow
/// circle moving right.
pub fn held_out_combinations() -> &'static [Combination] {
    &HELD_OUT
}
