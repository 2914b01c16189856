//! The largest solid blob of a pixel mask: the biggest 4-connected component that holds at least
//! one pixel whose whole 3x3 neighbourhood is in the mask. Thin structures, such as the ring of
//! blended pixels around an edge that happens to match a third colour, or scattered stray pixels,
//! have no such pixel and are never chosen.

/// One connected set of mask pixels, measured.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Blob {
    /// Number of pixels.
    pub(crate) area: usize,
    /// Mean pixel centre (x, y), in pixels from the top-left corner of the frame.
    pub(crate) centroid: (f64, f64),
    /// Smallest and largest column.
    pub(crate) columns: (usize, usize),
    /// Smallest and largest row.
    pub(crate) rows: (usize, usize),
    /// The pixels, as (x, y).
    pub(crate) pixels: Vec<(usize, usize)>,
}

/// The largest solid blob of `mask` (`height` rows of `width`), if any.
pub(crate) fn largest_blob(mask: &[bool], height: usize, width: usize) -> Option<Blob> {
    let mut visited = vec![false; mask.len()];
    let mut queue = Vec::new();
    let mut best: Option<Blob> = None;
    for seed in 0..mask.len() {
        if !mask[seed] || visited[seed] {
            continue;
        }
        visited[seed] = true;
        queue.clear();
        queue.push(seed);
        let mut grower = Grower::new(seed % width, seed / width);
        while let Some(at) = queue.pop() {
            let (x, y) = (at % width, at / width);
            grower.add(x, y, is_solid(mask, x, y, height, width));
            for next in neighbours(x, y, height, width).into_iter().flatten() {
                if mask[next] && !visited[next] {
                    visited[next] = true;
                    queue.push(next);
                }
            }
        }
        if let Some(blob) = grower.finish() {
            if best.as_ref().is_none_or(|b| blob.area > b.area) {
                best = Some(blob);
            }
        }
    }
    best
}

/// The 4-neighbours of (x, y) inside the frame, as indices.
fn neighbours(x: usize, y: usize, height: usize, width: usize) -> [Option<usize>; 4] {
    let at = y * width + x;
    [
        (x > 0).then(|| at - 1),
        (x + 1 < width).then(|| at + 1),
        (y > 0).then(|| at - width),
        (y + 1 < height).then(|| at + width),
    ]
}

/// Whether (x, y) and all eight of its neighbours are in the mask (never at the frame's edge).
fn is_solid(mask: &[bool], x: usize, y: usize, height: usize, width: usize) -> bool {
    if x == 0 || y == 0 || x + 1 >= width || y + 1 >= height {
        return false;
    }
    (y - 1..=y + 1).all(|row| (x - 1..=x + 1).all(|column| mask[row * width + column]))
}

/// A component and its running sums while it is flooded.
struct Grower {
    sum: (f64, f64),
    columns: (usize, usize),
    rows: (usize, usize),
    pixels: Vec<(usize, usize)>,
    solid: bool,
}

impl Grower {
    /// An empty component that starts at (x, y).
    fn new(x: usize, y: usize) -> Self {
        Self {
            sum: (0.0, 0.0),
            columns: (x, x),
            rows: (y, y),
            pixels: Vec::new(),
            solid: false,
        }
    }

    /// Adds pixel (x, y), `solid` when its 3x3 neighbourhood is all in the mask.
    fn add(&mut self, x: usize, y: usize, solid: bool) {
        self.pixels.push((x, y));
        self.sum.0 += x as f64 + 0.5;
        self.sum.1 += y as f64 + 0.5;
        self.columns = (self.columns.0.min(x), self.columns.1.max(x));
        self.rows = (self.rows.0.min(y), self.rows.1.max(y));
        self.solid |= solid;
    }

    /// The measured blob, or `None` if the component has no solid pixel.
    fn finish(self) -> Option<Blob> {
        let area = self.pixels.len();
        self.solid.then(|| Blob {
            area,
            centroid: (self.sum.0 / area as f64, self.sum.1 / area as f64),
            columns: self.columns,
            rows: self.rows,
            pixels: self.pixels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mask from rows of '#' (in) and '.' (out).
    fn mask(rows: &[&str]) -> (Vec<bool>, usize, usize) {
        let cells = rows
            .iter()
            .flat_map(|r| r.chars().map(|c| c == '#'))
            .collect();
        (cells, rows.len(), rows[0].len())
    }

    /// A 3x3 block beats a longer 2-pixel-thick bar, and a mask of only thin lines has no blob.
    #[test]
    fn thin_structures_are_never_blobs() {
        let (cells, h, w) = mask(&[
            "..........",
            ".###......",
            ".###.#####",
            ".###.#####",
            "..........",
            "#.#.#.#.#.",
        ]);
        let blob = largest_blob(&cells, h, w).expect("the block is solid");
        assert_eq!(blob.area, 9);
        assert_eq!(blob.centroid, (2.5, 2.5));
        assert_eq!((blob.columns, blob.rows), ((1, 3), (1, 3)));
        let (thin, h, w) = mask(&["......", ".####.", ".####.", "......", "#.#.#."]);
        assert_eq!(largest_blob(&thin, h, w), None);
    }

    /// The whole component counts, its thin parts included.
    #[test]
    fn a_solid_component_keeps_its_thin_parts() {
        let (cells, h, w) = mask(&["......", ".###..", ".#####", ".###..", "......"]);
        let blob = largest_blob(&cells, h, w).expect("solid centre");
        assert_eq!(blob.area, 11);
        assert_eq!(blob.columns, (1, 5));
    }
}
