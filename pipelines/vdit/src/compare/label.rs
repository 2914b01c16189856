//! Method names burned into the side-by-side videos in the built-in 5x7 font
//! ([`vdit_core::font`]), drawn white on a black band.

/// The glyph of `c` in a label: letters in lower case, as method specs write them.
fn glyph(c: char) -> [u8; 7] {
    vdit_core::font::glyph(c.to_ascii_lowercase())
}

/// Width of a character cell in font pixels (5 and a gap).
const CELL: usize = 6;
/// Height of the band in font pixels (7 and a margin above and below).
const BAND: usize = 9;

/// Draws `text` at the top-left of the `w` x `h` region at (`x0`, `y0`) of an RGB image
/// `width` pixels wide: a black band with white letters, `scale` screen pixels per font pixel,
/// cut off at the region's right edge.
pub fn draw(
    rgb: &mut [u8],
    width: usize,
    (x0, y0): (usize, usize),
    (w, h): (usize, usize),
    text: &str,
    scale: usize,
) {
    let band_h = (BAND * scale).min(h);
    let band_w = ((text.chars().count() * CELL + 1) * scale).min(w);
    let mut set = |x: usize, y: usize, value: u8| {
        if x < w && y < h {
            let i = ((y0 + y) * width + x0 + x) * 3;
            if let Some(pixel) = rgb.get_mut(i..i + 3) {
                pixel.fill(value);
            }
        }
    };
    for y in 0..band_h {
        for x in 0..band_w {
            set(x, y, 0);
        }
    }
    for (i, c) in text.chars().enumerate() {
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..5 {
                if bits & (1 << (4 - col)) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let x = (1 + i * CELL + col) * scale + dx;
                        let y = (1 + row) * scale + dy;
                        set(x, y, 255);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The letters land inside the band, white on black, and nothing outside the region moves.
    #[test]
    fn draws_inside_its_region() {
        let (width, height) = (40, 20);
        let mut rgb = vec![100u8; width * height * 3];
        draw(&mut rgb, width, (10, 5), (20, 10), "vsa:0.5", 1);
        let at = |x: usize, y: usize| rgb[(y * width + x) * 3];
        // 'v' row 2 is 10001: its first pixel at cell x 1, y 1 + 2
        assert_eq!(at(10 + 1, 5 + 3), 255);
        assert_eq!(at(10, 5), 0, "band");
        assert_eq!(at(9, 5), 100, "left of the region");
        assert_eq!(at(30, 5), 100, "right of the region");
        assert_eq!(at(12, 15), 100, "below the band");
        let white = rgb.chunks(3).filter(|p| p[0] == 255).count();
        assert!(white > 20, "{white} white pixels");
    }
}
