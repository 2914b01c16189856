//! Captions: the text of a scene, and the parser that reads a caption back (grammar in the
//! module doc of [`crate::data`]).

use std::fmt;

use super::palette::Colour;
use super::scene::{Motion, Scene, Shape};
use super::split::Combination;
use crate::error::{Error, Result};

/// What a caption says: one or two objects of distinct object colours, and the background
/// (black when the caption names none), which no object shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caption {
    objects: Vec<Combination>,
    background: Colour,
}

impl Caption {
    /// A caption of `objects` on `background`, checked as the parser checks it.
    pub fn new(objects: Vec<Combination>, background: Colour) -> Result<Self> {
        if objects.is_empty() || objects.len() > 2 {
            return Err(Error::Caption(format!(
                "a caption has one or two objects, not {}",
                objects.len()
            )));
        }
        for (i, object) in objects.iter().enumerate() {
            if !object.colour.is_object_colour() {
                return Err(Error::Caption(format!(
                    "an object cannot be {}; use one of {}",
                    object.colour, OBJECT_COLOURS
                )));
            }
            if object.colour == background {
                return Err(Error::Caption(format!(
                    "the {} {} would not show on a {background} background; give the object or \
                     the background another colour",
                    object.colour, object.shape
                )));
            }
            if objects[..i].iter().any(|o| o.colour == object.colour) {
                return Err(Error::Caption(format!(
                    "both objects are {}; give the second object another colour",
                    object.colour
                )));
            }
        }
        Ok(Self {
            objects,
            background,
        })
    }

    /// A caption already known to satisfy [`Caption::new`]'s checks.
    pub(super) fn from_checked(objects: Vec<Combination>, background: Colour) -> Self {
        Self {
            objects,
            background,
        }
    }

    /// Reads a caption: ASCII case is ignored, as are extra whitespace and one trailing period.
    pub fn parse(text: &str) -> Result<Self> {
        let trimmed = text.trim();
        let body = trimmed.strip_suffix('.').unwrap_or(trimmed);
        let mut words = Words::new(body);
        let mut objects = vec![object(&mut words)?];
        let mut expected = "\"and\", \"on\" or the end of the caption";
        if words.next_is("and") {
            objects.push(object(&mut words)?);
            expected = "\"on\" or the end of the caption";
        }
        let mut background = Colour::Black;
        if words.next_is("on") {
            words.expect("a")?;
            background = words.colour(
                &Colour::BACKGROUND,
                &format!("a colour: {BACKGROUND_COLOURS}"),
            )?;
            words.expect("background")?;
            expected = "the end of the caption";
        }
        words.finish(expected)?;
        Self::new(objects, background)
    }

    /// The objects, in caption order.
    pub fn objects(&self) -> &[Combination] {
        &self.objects
    }

    /// The background colour.
    pub fn background(&self) -> Colour {
        self.background
    }
}

impl fmt::Display for Caption {
    /// The caption text; the background phrase only when the background is not black.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, o) in self.objects.iter().enumerate() {
            let joint = if i == 0 { "" } else { " and " };
            write!(f, "{joint}a {} {} {}", o.colour, o.shape, o.motion)?;
        }
        if self.background != Colour::Black {
            write!(f, " on a {} background", self.background)?;
        }
        Ok(())
    }
}

/// The caption of `scene`.
pub fn caption(scene: &Scene) -> String {
    scene.caption().to_string()
}

/// Reads `text` as a caption; see [`Caption::parse`].
pub fn parse(text: &str) -> Result<Caption> {
    Caption::parse(text)
}

/// The object colours, as error messages list them.
const OBJECT_COLOURS: &str = "red, green, blue, yellow, white or purple";
/// The background colours, as error messages list them.
const BACKGROUND_COLOURS: &str = "black, gray, red, green, blue, yellow, white or purple";
/// The shapes, as error messages list them.
const SHAPES: &str = "circle, square or triangle";

/// `object = "a " , colour , " " , shape , " " , motion`.
fn object(words: &mut Words<'_>) -> Result<Combination> {
    words.expect("a")?;
    let colour = words.colour(
        &Colour::OBJECT,
        &format!("an object colour: {OBJECT_COLOURS}"),
    )?;
    let shape = words.take(Shape::from_name, &format!("a shape: {SHAPES}"))?;
    words.expect("moves")?;
    let motion = words.take(
        |w| match w {
            "to" => Some(None),
            "up" => Some(Some(Motion::Up)),
            "down" => Some(Some(Motion::Down)),
            _ => None,
        },
        "\"to\", \"up\" or \"down\"",
    )?;
    let motion = match motion {
        Some(m) => m,
        None => {
            words.expect("the")?;
            words.take(
                |w| match w {
                    "right" => Some(Motion::Right),
                    "left" => Some(Motion::Left),
                    _ => None,
                },
                "\"right\" or \"left\"",
            )?
        }
    };
    Ok(Combination {
        colour,
        shape,
        motion,
    })
}

/// The words of a caption and how far the parser has read.
struct Words<'a> {
    words: Vec<&'a str>,
    read: usize,
}

impl<'a> Words<'a> {
    /// The whitespace-separated words of `text`.
    fn new(text: &'a str) -> Self {
        Self {
            words: text.split_whitespace().collect(),
            read: 0,
        }
    }

    /// Reads the next word if it is `word` (ignoring ASCII case).
    fn next_is(&mut self, word: &str) -> bool {
        let found = self
            .words
            .get(self.read)
            .is_some_and(|w| w.eq_ignore_ascii_case(word));
        if found {
            self.read += 1;
        }
        found
    }

    /// Reads the next word, which must be `word`.
    fn expect(&mut self, word: &str) -> Result<()> {
        self.take(|w| (w == word).then_some(()), &format!("\"{word}\""))
    }

    /// Reads a colour among `allowed`, described in messages as `expected`.
    fn colour(&mut self, allowed: &[Colour], expected: &str) -> Result<Colour> {
        self.take(
            |w| Colour::from_name(w).filter(|c| allowed.contains(c)),
            expected,
        )
    }

    /// Reads the next word through `read` (given it in lower case), or errors naming the word
    /// and `expected`.
    fn take<T>(&mut self, read: impl Fn(&str) -> Option<T>, expected: &str) -> Result<T> {
        let Some(word) = self.words.get(self.read) else {
            return Err(self.ended(expected));
        };
        match read(&word.to_ascii_lowercase()) {
            Some(value) => {
                self.read += 1;
                Ok(value)
            }
            None => Err(Error::Caption(format!(
                "unexpected word \"{word}\" (word {} of the caption); expected {expected}",
                self.read + 1
            ))),
        }
    }

    /// Errors unless every word has been read; `expected` says what else could have come.
    fn finish(&self, expected: &str) -> Result<()> {
        let Some(word) = self.words.get(self.read) else {
            return Ok(());
        };
        Err(Error::Caption(format!(
            "unexpected word \"{word}\" (word {} of the caption); expected {expected}",
            self.read + 1
        )))
    }

    /// The error for a caption that stops where `expected` should come.
    fn ended(&self, expected: &str) -> Error {
        match self.read.checked_sub(1).and_then(|i| self.words.get(i)) {
            Some(last) => Error::Caption(format!(
                "the caption ends after \"{last}\"; expected {expected}"
            )),
            None => Error::Caption(format!("the caption is empty; expected {expected}")),
        }
    }
}
