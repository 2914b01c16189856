//! Procedural captioned videos: coloured shapes moving on plain backgrounds, deterministic by
//! seed, each with a caption in one small grammar.
//!
//! - [`palette`]: the named colours and their RGB values.
//! - [`scene`]: shapes, motions, objects and scenes, and sampling a scene from a seed.
//! - [`split`]: the combinations held out of training.
//! - [`caption`](mod@caption): writing a scene's caption and parsing a caption back.
//! - [`render`](mod@render): drawing a scene into RGB frames.
//!
//! # Scenes
//!
//! One object (a size of 0.15-0.20 of the shorter frame side: radius, half-side, or half-base
//! and half-height of an upright isosceles triangle) or, with probability 0.25 by default, two
//! smaller ones (0.13-0.15) of different colours whose boxes never overlap. Each moves at
//! constant speed along one axis by 0.35-0.45 of the frame side (0.35-0.40 for two) and stays
//! wholly inside the frame in every frame. The background is black, or with probability 0.6 by
//! default gray or an object colour unlike every object. Held-out combinations
//! ([`held_out_combinations`]) appear only in [`Split::Held`] scenes, alone.
//!
//! # Caption grammar
//!
//! ```text
//! caption = object , [ " and " , object ] , [ " on a " , colour , " background" ] ;
//! object  = "a " , colour , " " , shape , " " , motion ;
//! colour  = "red" | "green" | "blue" | "yellow" | "white" | "purple" | "black" | "gray" ;
//! shape   = "circle" | "square" | "triangle" ;
//! motion  = "moves to the right" | "moves to the left" | "moves up" | "moves down" ;
//! ```
//!
//! Objects take only the first six colours, two objects have different colours, and no object
//! has the background's colour. Without a background phrase the background is black, and a
//! scene's caption leaves the phrase out exactly when its background is black. The parser
//! ignores ASCII case, extra whitespace between words and around the caption, and one trailing
//! period; any other departure is an [`Error::Caption`](crate::Error::Caption) naming the
//! unexpected word and what was expected. Positions and sizes are not in the caption.
//!
//! For example `a red circle moves to the right` and
//! `a blue square moves up on a yellow background`.

pub mod caption;
mod layout;
pub mod palette;
mod random;
pub mod render;
pub mod scene;
pub mod split;

pub use caption::{caption, parse, Caption};
pub use palette::Colour;
pub use render::{render, Video};
pub use scene::{Motion, Object, Scene, SceneOptions, Shape};
pub use split::{held_out_combinations, Combination, Split};
