//! What a video shows: the objects (colour, shape, motion, where and how big) and the background,
//! sampled deterministically from a seed.

use std::fmt;

use super::caption::Caption;
use super::layout::lay_out;
use super::palette::Colour;
use super::random::Draws;
use super::split::{held_out_combinations, Combination, Split};
use crate::error::{Error, Result};

/// An object's outline. Every shape of size `s` fits the same 2s x 2s box around its centre.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    /// A disc of radius `s`.
    Circle,
    /// An axis-aligned square of half-side `s`.
    Square,
    /// An upright isosceles triangle: base 2s at the bottom of the box, apex at the top middle.
    Triangle,
}

impl Shape {
    /// Every shape.
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    /// The word for this shape in captions.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    /// The shape named by a lower-case caption word.
    pub fn from_name(word: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.name() == word)
    }

    /// Whether the point (`dx`, `dy`) from the centre of the box lies in the shape of size
    /// `half`; y grows downward.
    pub fn contains(self, dx: f64, dy: f64, half: f64) -> bool {
        match self {
            Shape::Circle => dx * dx + dy * dy <= half * half,
            Shape::Square => dx.abs() <= half && dy.abs() <= half,
            // apex at (0, -half), base corners at (+-half, half): the half-width grows by 1/2
            // per unit down
            Shape::Triangle => dy <= half && dx.abs() <= (dy + half) / 2.0,
        }
    }

    /// The area of the shape of size `half`.
    pub fn area(self, half: f64) -> f64 {
        let unit = match self {
            Shape::Circle => std::f64::consts::PI,
            Shape::Square => 4.0,
            Shape::Triangle => 2.0,
        };
        unit * half * half
    }

    /// How far below the centre of its box the shape's centroid lies, at size `half`.
    pub fn centroid_drop(self, half: f64) -> f64 {
        match self {
            Shape::Circle | Shape::Square => 0.0,
            Shape::Triangle => half / 3.0,
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A straight motion at constant speed along one image axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Motion {
    /// Towards larger x.
    Right,
    /// Towards smaller x.
    Left,
    /// Towards smaller y (image rows grow downward).
    Up,
    /// Towards larger y.
    Down,
}

impl Motion {
    /// Every motion.
    pub const ALL: [Motion; 4] = [Motion::Right, Motion::Left, Motion::Up, Motion::Down];

    /// The caption phrase for this motion.
    pub fn phrase(self) -> &'static str {
        match self {
            Motion::Right => "moves to the right",
            Motion::Left => "moves to the left",
            Motion::Up => "moves up",
            Motion::Down => "moves down",
        }
    }

    /// The unit step in image coordinates (x right, y down).
    pub fn step(self) -> (f64, f64) {
        match self {
            Motion::Right => (1.0, 0.0),
            Motion::Left => (-1.0, 0.0),
            Motion::Up => (0.0, -1.0),
            Motion::Down => (0.0, 1.0),
        }
    }
}

impl fmt::Display for Motion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.phrase())
    }
}

/// One object of a scene. Lengths are fractions of the frame: x of the width, y of the height,
/// `size` of the shorter side, `travel` of the side along the motion.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Object {
    /// The object's colour.
    pub colour: Colour,
    /// The object's shape.
    pub shape: Shape,
    /// The direction it moves in.
    pub motion: Motion,
    /// Centre of its 2s x 2s box at the first frame, (x, y).
    pub start: (f64, f64),
    /// Radius of a circle, half-side of a square, half-base and half-height of a triangle.
    pub size: f64,
    /// Distance moved from the first frame to the last.
    pub travel: f64,
}

impl Object {
    /// The object's colour, shape and motion.
    pub fn combination(&self) -> Combination {
        Combination {
            colour: self.colour,
            shape: self.shape,
            motion: self.motion,
        }
    }

    /// Centre of its box at `progress` through the clip (0 at the first frame, 1 at the last).
    pub fn centre(&self, progress: f64) -> (f64, f64) {
        let (dx, dy) = self.motion.step();
        let distance = self.travel * progress;
        (self.start.0 + dx * distance, self.start.1 + dy * distance)
    }
}

/// How often sampled scenes state a background or show two objects.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SceneOptions {
    /// Probability that the background is not black (and so is named in the caption).
    pub stated_background: f64,
    /// Probability that a training scene has two objects instead of one.
    pub two_objects: f64,
}

impl Default for SceneOptions {
    /// A stated background 60% of the time, two objects 25% of the time.
    fn default() -> Self {
        Self {
            stated_background: 0.6,
            two_objects: 0.25,
        }
    }
}

impl SceneOptions {
    /// Both probabilities must lie in [0, 1].
    fn check(&self) -> Result<()> {
        for (name, p) in [
            ("stated_background", self.stated_background),
            ("two_objects", self.two_objects),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::Usage(format!(
                    "scene option {name} is {p}; give a probability between 0 and 1"
                )));
            }
        }
        Ok(())
    }
}

/// One or two objects on a plain background; every object stays wholly inside the frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    objects: Vec<Object>,
    background: Colour,
}

impl Scene {
    /// A scene from explicit objects: one or two, of distinct object colours unlike the
    /// background ([`Error::Caption`] otherwise), finite, with size in (0, 0.5) and every box
    /// inside the frame at both ends ([`Error::Usage`] otherwise).
    pub fn new(objects: Vec<Object>, background: Colour) -> Result<Self> {
        Caption::new(
            objects.iter().map(Object::combination).collect(),
            background,
        )?;
        for object in &objects {
            check_inside(object)?;
        }
        Ok(Self {
            objects,
            background,
        })
    }

    /// The scene for `seed` in `split`: the same seed always gives the same scene.
    pub fn sample(seed: u64, split: Split, options: &SceneOptions) -> Result<Self> {
        options.check()?;
        let mut draws = Draws::new(seed);
        let combinations = match split {
            Split::Train => draw_training_objects(&mut draws, options.two_objects),
            Split::Held => draws.pick(held_out_combinations()).into_iter().collect(),
        };
        let background = draw_background(&mut draws, &combinations, options.stated_background);
        Self::from_combinations(&combinations, background, &mut draws)
    }

    /// A scene showing `caption`, with sizes and positions drawn from `seed`.
    pub fn place(caption: &Caption, seed: u64) -> Result<Self> {
        Self::from_combinations(
            caption.objects(),
            caption.background(),
            &mut Draws::new(seed),
        )
    }

    /// The objects, drawn in this order (a later one covers an earlier one).
    pub fn objects(&self) -> &[Object] {
        &self.objects
    }

    /// The background colour.
    pub fn background(&self) -> Colour {
        self.background
    }

    /// What the caption of this scene says: colours, shapes, motions and background.
    pub fn caption(&self) -> Caption {
        Caption::from_checked(
            self.objects.iter().map(Object::combination).collect(),
            self.background,
        )
    }

    /// Places `combinations` with sizes and positions from `draws`.
    fn from_combinations(
        combinations: &[Combination],
        background: Colour,
        draws: &mut Draws,
    ) -> Result<Self> {
        let motions: Vec<Motion> = combinations.iter().map(|c| c.motion).collect();
        let objects = combinations
            .iter()
            .zip(lay_out(&motions, draws))
            .map(|(c, placement)| Object {
                colour: c.colour,
                shape: c.shape,
                motion: c.motion,
                start: placement.start,
                size: placement.size,
                travel: placement.travel,
            })
            .collect();
        Self::new(objects, background)
    }
}

/// Allowance for rounding when checking that a box stays inside the frame.
const INSIDE_SLACK: f64 = 1e-9;

/// Errors unless the object's size is usable and its box is inside the frame at both ends.
fn check_inside(object: &Object) -> Result<()> {
    let end = object.centre(1.0);
    let numbers = [object.start.0, object.start.1, object.size, object.travel];
    if !numbers.iter().all(|x| x.is_finite()) {
        return Err(Error::Usage(format!(
            "the {} {} has a non-finite position, size or travel",
            object.colour, object.shape
        )));
    }
    if !(object.size > 0.0 && object.size < 0.5 && object.travel >= 0.0) {
        return Err(Error::Usage(format!(
            "the {} {} has size {} and travel {}; give a size in (0, 0.5) and a travel of at least 0",
            object.colour, object.shape, object.size, object.travel
        )));
    }
    let low = object.size - INSIDE_SLACK;
    let high = 1.0 - object.size + INSIDE_SLACK;
    for (x, y) in [object.start, end] {
        if !(low..=high).contains(&x) || !(low..=high).contains(&y) {
            return Err(Error::Usage(format!(
                "the {} {} leaves the frame (centre ({x:.3}, {y:.3}) with size {:.3}); keep the \
                 centre within size of every edge",
                object.colour, object.shape, object.size
            )));
        }
    }
    Ok(())
}

/// One training combination, and a second of another colour with probability `two_objects`.
fn draw_training_objects(draws: &mut Draws, two_objects: f64) -> Vec<Combination> {
    let allowed: Vec<Combination> = Combination::all().filter(|c| !c.is_held_out()).collect();
    let mut chosen: Vec<Combination> = draws.pick(&allowed).into_iter().collect();
    if draws.chance(two_objects) {
        let others: Vec<Combination> = allowed
            .into_iter()
            .filter(|c| chosen.iter().all(|first| first.colour != c.colour))
            .collect();
        chosen.extend(draws.pick(&others));
    }
    chosen
}

/// Black, or with probability `stated` a uniform other background colour unlike every object.
fn draw_background(draws: &mut Draws, objects: &[Combination], stated: f64) -> Colour {
    if !draws.chance(stated) {
        return Colour::Black;
    }
    let free: Vec<Colour> = Colour::BACKGROUND
        .into_iter()
        .filter(|&b| b != Colour::Black && objects.iter().all(|o| o.colour != b))
        .collect();
    draws.pick(&free).unwrap_or(Colour::Black)
}
