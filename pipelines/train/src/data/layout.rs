//! Where objects go: sizes, travels and start positions that keep every object inside the frame
//! for the whole clip and keep two objects apart.
//!
//! A lone object has size 0.15-0.20 (of the shorter side) and travels 0.35-0.45 of the frame.
//! Two objects are a little smaller (size 0.13-0.15, travel 0.35-0.40) and get disjoint regions:
//! two horizontal movers take the top and bottom halves, two vertical movers the left and right
//! halves, and a vertical mover takes a column beside the whole sweep of a horizontal mover. So
//! their boxes never overlap in any frame.

use super::random::Draws;
use super::scene::Motion;

/// Size range of a lone object.
const SINGLE_SIZE: (f64, f64) = (0.15, 0.20);
/// Travel range of a lone object.
const SINGLE_TRAVEL: (f64, f64) = (0.35, 0.45);
/// Size range of each of two objects.
const PAIR_SIZE: (f64, f64) = (0.13, 0.15);
/// Travel range of each of two objects; 2 * (0.15 + 0.15) + 0.40 fits the frame side exactly.
const PAIR_TRAVEL: (f64, f64) = (0.35, 0.40);

/// One object's size, travel and start centre, as fractions of the frame.
pub(crate) struct Placement {
    /// Centre at the first frame, (x, y).
    pub(crate) start: (f64, f64),
    /// Half the side of its box.
    pub(crate) size: f64,
    /// Distance moved over the clip.
    pub(crate) travel: f64,
}

/// The part of the frame an object's box must stay in: x and y ranges.
#[derive(Clone, Copy)]
struct Region {
    x: (f64, f64),
    y: (f64, f64),
}

/// The whole frame.
const FULL: Region = Region {
    x: (0.0, 1.0),
    y: (0.0, 1.0),
};

/// A placement for each motion; two objects never overlap.
pub(crate) fn lay_out(motions: &[Motion], draws: &mut Draws) -> Vec<Placement> {
    let (size_range, travel_range) = if motions.len() > 1 {
        (PAIR_SIZE, PAIR_TRAVEL)
    } else {
        (SINGLE_SIZE, SINGLE_TRAVEL)
    };
    let sized: Vec<(Motion, f64, f64)> = motions
        .iter()
        .map(|&m| {
            let size = draws.between(size_range.0, size_range.1);
            (m, size, draws.between(travel_range.0, travel_range.1))
        })
        .collect();
    let regions = regions(&sized, draws);
    sized
        .into_iter()
        .zip(regions)
        .map(|((motion, size, travel), region)| {
            let (dx, dy) = motion.step();
            let x = span_start(dx, size, travel, region.x, draws);
            let y = span_start(dy, size, travel, region.y, draws);
            Placement {
                start: (x, y),
                size,
                travel,
            }
        })
        .collect()
}

/// The region of each (motion, size, travel): disjoint for two objects, the frame otherwise.
fn regions(sized: &[(Motion, f64, f64)], draws: &mut Draws) -> Vec<Region> {
    let [first, second] = sized else {
        return vec![FULL; sized.len()];
    };
    let horizontal = |m: Motion| m.step().1 == 0.0;
    let first_side = draws.chance(0.5);
    match (horizontal(first.0), horizontal(second.0)) {
        (true, true) => {
            let (a, b) = halves(first_side);
            vec![Region { y: a, ..FULL }, Region { y: b, ..FULL }]
        }
        (false, false) => {
            let (a, b) = halves(first_side);
            vec![Region { x: a, ..FULL }, Region { x: b, ..FULL }]
        }
        (true, false) => {
            let (sweep, column) = beside(first, second, first_side, draws);
            vec![Region { x: sweep, ..FULL }, Region { x: column, ..FULL }]
        }
        (false, true) => {
            let (sweep, column) = beside(second, first, first_side, draws);
            vec![Region { x: column, ..FULL }, Region { x: sweep, ..FULL }]
        }
    }
}

/// The two halves [0, 0.5] and [0.5, 1], the first one first when `first_low`.
fn halves(first_low: bool) -> ((f64, f64), (f64, f64)) {
    if first_low {
        ((0.0, 0.5), (0.5, 1.0))
    } else {
        ((0.5, 1.0), (0.0, 0.5))
    }
}

/// Disjoint x ranges for a horizontal mover's sweep and a vertical mover's column, the column
/// on the left when `column_left`; the spare width goes to the column by a uniform share.
fn beside(
    horizontal: &(Motion, f64, f64),
    vertical: &(Motion, f64, f64),
    column_left: bool,
    draws: &mut Draws,
) -> ((f64, f64), (f64, f64)) {
    let (_, h_size, h_travel) = *horizontal;
    let v_size = vertical.1;
    let spare = (1.0 - 2.0 * (h_size + v_size) - h_travel).max(0.0);
    let column = 2.0 * v_size + draws.between(0.0, spare);
    if column_left {
        ((column, 1.0), (0.0, column))
    } else {
        ((0.0, 1.0 - column), (1.0 - column, 1.0))
    }
}

/// A start coordinate along one axis, uniform over those keeping the box (half-side `size`)
/// inside `(low, high)` while it moves `travel` in `direction` (-1, 0 or 1) along the axis.
fn span_start(direction: f64, size: f64, travel: f64, range: (f64, f64), draws: &mut Draws) -> f64 {
    let moved = travel * direction.abs();
    let least = range.0 + size;
    let most = (range.1 - size - moved).max(least);
    let lowest_centre = draws.between(least, most);
    if direction < 0.0 {
        lowest_centre + moved
    } else {
        lowest_centre
    }
}
