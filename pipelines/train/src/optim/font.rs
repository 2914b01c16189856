//! Plot labels in the built-in 5×7 font ([`vdit_core::font`]): digits, capitals (lower case
//! drawn as upper case, except `e` for exponents) and a little punctuation.

use image::{Rgb, RgbImage};

use vdit_core::font::glyph;
pub(crate) use vdit_core::font::{GLYPH_HEIGHT, GLYPH_WIDTH};

/// Horizontal distance from one glyph to the next (one blank column).
pub(crate) const ADVANCE: u32 = GLYPH_WIDTH + 1;

/// The glyph of `c` on plots: lower case drawn as upper case, except `e` (exponents).
fn plot_glyph(c: char) -> [u8; 7] {
    match c {
        'e' => glyph('e'),
        c => glyph(c.to_ascii_uppercase()),
    }
}

/// Width in pixels of `text` drawn at `scale`.
pub(crate) fn text_width(text: &str, scale: u32) -> u32 {
    let n = text.chars().count() as u32;
    (n.saturating_mul(ADVANCE).saturating_sub(1)).saturating_mul(scale)
}

/// Draws `text` with its top-left corner at (`x`, `y`), each font pixel a `scale`×`scale`
/// square; pixels outside the image are skipped.
pub(crate) fn draw_text(
    img: &mut RgbImage,
    x: i64,
    y: i64,
    text: &str,
    color: Rgb<u8>,
    scale: u32,
) {
    let scale = i64::from(scale.max(1));
    let (width, height) = (i64::from(img.width()), i64::from(img.height()));
    for (i, c) in text.chars().enumerate() {
        let left = x + i as i64 * i64::from(ADVANCE) * scale;
        for (row, bits) in plot_glyph(c).iter().enumerate() {
            for col in 0..GLYPH_WIDTH {
                if bits & (0x10 >> col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let px = left + i64::from(col) * scale + dx;
                        let py = y + row as i64 * scale + dy;
                        if (0..width).contains(&px) && (0..height).contains(&py) {
                            img.put_pixel(px as u32, py as u32, color);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_and_label_characters_are_distinct_glyphs() {
        let chars: Vec<char> = "0123456789.-+e".chars().collect();
        for (i, a) in chars.iter().enumerate() {
            assert!(plot_glyph(*a).iter().any(|r| *r != 0), "{a} is blank");
            assert!(
                plot_glyph(*a).iter().all(|r| *r < 0x20),
                "{a} is wider than 5"
            );
            for b in &chars[i + 1..] {
                assert_ne!(plot_glyph(*a), plot_glyph(*b), "{a} and {b} look alike");
            }
        }
        assert_eq!(plot_glyph('s'), plot_glyph('S'));
        assert_ne!(plot_glyph('e'), plot_glyph('E'));
    }

    #[test]
    fn text_is_drawn_inside_its_box() {
        let mut img = RgbImage::new(40, 20);
        draw_text(&mut img, 2, 3, "1e-4", Rgb([255, 255, 255]), 1);
        let lit: Vec<(u32, u32)> = img
            .enumerate_pixels()
            .filter(|(_, _, p)| p.0[0] == 255)
            .map(|(x, y, _)| (x, y))
            .collect();
        assert!(!lit.is_empty());
        let w = text_width("1e-4", 1);
        assert!(lit
            .iter()
            .all(|&(x, y)| (2..2 + w).contains(&x) && (3..10).contains(&y)));
    }
}
