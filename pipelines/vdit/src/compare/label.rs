//! Method names burned into the side-by-side videos: a 5x7 pixel font of the characters method
//! specs and file names use, drawn white on a black band.

/// Glyph rows, top to bottom, 5 bits each (bit 4 is the leftmost pixel).
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_lowercase() {
        'a' => [0, 0, 14, 1, 15, 17, 15],
        'b' => [16, 16, 22, 25, 17, 17, 30],
        'c' => [0, 0, 14, 16, 16, 17, 14],
        'd' => [1, 1, 13, 19, 17, 17, 15],
        'e' => [0, 0, 14, 17, 31, 16, 14],
        'f' => [6, 9, 8, 28, 8, 8, 8],
        'g' => [0, 15, 17, 17, 15, 1, 14],
        'h' => [16, 16, 22, 25, 17, 17, 17],
        'i' => [4, 0, 12, 4, 4, 4, 14],
        'j' => [2, 0, 6, 2, 2, 18, 12],
        'k' => [16, 16, 18, 20, 24, 20, 18],
        'l' => [12, 4, 4, 4, 4, 4, 14],
        'm' => [0, 0, 26, 21, 21, 17, 17],
        'n' => [0, 0, 22, 25, 17, 17, 17],
        'o' => [0, 0, 14, 17, 17, 17, 14],
        'p' => [0, 0, 30, 17, 30, 16, 16],
        'q' => [0, 0, 13, 19, 15, 1, 1],
        'r' => [0, 0, 22, 25, 16, 16, 16],
        's' => [0, 0, 14, 16, 14, 1, 30],
        't' => [8, 8, 28, 8, 8, 9, 6],
        'u' => [0, 0, 17, 17, 17, 19, 13],
        'v' => [0, 0, 17, 17, 17, 10, 4],
        'w' => [0, 0, 17, 17, 21, 21, 10],
        'x' => [0, 0, 17, 10, 4, 10, 17],
        'y' => [0, 0, 17, 17, 15, 1, 14],
        'z' => [0, 0, 31, 2, 4, 8, 31],
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        '=' => [0, 0, 31, 0, 31, 0, 0],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        ',' => [0, 0, 0, 0, 12, 4, 8],
        '_' => [0, 0, 0, 0, 0, 0, 31],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        '/' => [0, 1, 2, 4, 8, 16, 0],
        ' ' => [0; 7],
        // anything else: a hollow box
        _ => [31, 17, 17, 17, 17, 17, 31],
    }
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
