//! The rasteriser: layout of the bytes, checked sizes, positions over time, shape areas and
//! anti-aliased edges.

mod train_common;

use train::data::{render, Colour, Motion, Object, Scene, SceneOptions, Shape, Split, Video};
use train::Error;
use train_common::fresh_seed;

/// The pixel at (`x`, `y`) of frame `f`.
fn pixel(video: &Video, f: usize, y: usize, x: usize) -> [u8; 3] {
    let frame = video.frame(f).expect("frame exists");
    let at = (y * video.width() + x) * 3;
    [frame[at], frame[at + 1], frame[at + 2]]
}

/// The object's share of each pixel of frame `f`, read back from a one-object render: the
/// largest channel difference from the background, over the object's.
fn coverage(video: &Video, f: usize, object: Colour, background: Colour) -> Vec<f64> {
    let (o, b) = (object.rgb(), background.rgb());
    let channel = (0..3)
        .max_by_key(|&c| o[c].abs_diff(b[c]))
        .expect("three channels");
    let span = f64::from(o[channel]) - f64::from(b[channel]);
    video
        .frame(f)
        .expect("frame exists")
        .chunks_exact(3)
        .map(|p| (f64::from(p[channel]) - f64::from(b[channel])) / span)
        .collect()
}

/// A red object of `shape` on black starting at (0.3, 0.5), size 0.15, moving right by 0.4.
fn red_mover(shape: Shape) -> Scene {
    let object = Object {
        colour: Colour::Red,
        shape,
        motion: Motion::Right,
        start: (0.3, 0.5),
        size: 0.15,
        travel: 0.4,
    };
    Scene::new(vec![object], Colour::Black).expect("valid scene")
}

#[test]
fn bytes_are_frame_major_row_major_rgb() {
    let scene = red_mover(Shape::Square);
    let video = render(&scene, 5, 40, 60).expect("renders");
    assert_eq!((video.frames(), video.height(), video.width()), (5, 40, 60));
    assert_eq!(video.rgb().len(), 5 * 40 * 60 * 3);
    assert_eq!(video.frame(4).map(<[u8]>::len), Some(40 * 60 * 3));
    assert_eq!(video.frame(5), None);
    // centre of frame 0: x = 0.3 * 60 = 18, y = 20; frame 4 is 0.4 * 60 = 24 pixels further
    let red = Colour::Red.rgb();
    assert_eq!(pixel(&video, 0, 20, 18), red);
    assert_eq!(pixel(&video, 0, 20, 42), [0, 0, 0]);
    assert_eq!(pixel(&video, 4, 20, 42), red);
    assert_eq!(pixel(&video, 4, 20, 18), [0, 0, 0]);
    let at = ((4 * 40 + 20) * 60 + 42) * 3;
    assert_eq!(video.rgb()[at..at + 3], red);
    assert_eq!(pixel(&video, 2, 0, 0), [0, 0, 0]);
    let bytes = video.clone().into_rgb();
    assert_eq!(Video::new(5, 40, 60, bytes).expect("right length"), video);
}

#[test]
fn sizes_are_checked_without_panicking() {
    let scene = red_mover(Shape::Circle);
    for (f, h, w) in [
        (0, 8, 8),
        (8, 0, 8),
        (8, 8, 0),
        (usize::MAX, 2, 2),
        (2, usize::MAX, usize::MAX),
    ] {
        assert!(
            matches!(render(&scene, f, h, w), Err(Error::Usage(_))),
            "{f}x{h}x{w}"
        );
    }
    assert!(matches!(
        Video::new(1, 2, 2, vec![0; 11]),
        Err(Error::Usage(_))
    ));
    assert!(matches!(Video::new(1, 2, 0, vec![]), Err(Error::Usage(_))));
    assert!(matches!(
        Video::new(usize::MAX, usize::MAX, 1, vec![]),
        Err(Error::Usage(_))
    ));
}

#[test]
fn shapes_cover_their_area_and_edges_are_blended() {
    // size 0.15 of 64 pixels: half-side 9.6
    let half: f64 = 9.6;
    for shape in Shape::ALL {
        let (area, tolerance) = area_and_tolerance(shape, half);
        let video = render(&red_mover(shape), 17, 64, 64).expect("renders");
        for f in 0..17 {
            let cover = coverage(&video, f, Colour::Red, Colour::Black);
            let total: f64 = cover.iter().sum();
            assert!(
                (total - area).abs() <= tolerance,
                "{shape} frame {f}: {total} vs {area}"
            );
            let blended = cover.iter().filter(|&&c| c > 0.02 && c < 0.98).count();
            assert!(blended >= 20, "{shape} frame {f}: {blended} edge pixels");
        }
        // the start frame's coverage centroid is the box centre, below it by size/3 for a triangle
        let cover = coverage(&video, 0, Colour::Red, Colour::Black);
        let total: f64 = cover.iter().sum();
        let mean_x: f64 = cover
            .iter()
            .enumerate()
            .map(|(i, c)| c * ((i % 64) as f64 + 0.5))
            .sum::<f64>()
            / total;
        let mean_y: f64 = cover
            .iter()
            .enumerate()
            .map(|(i, c)| c * ((i / 64) as f64 + 0.5))
            .sum::<f64>()
            / total;
        let below = shape.centroid_drop(half);
        assert!((mean_x - 0.3 * 64.0).abs() < 0.1, "{shape}: x {mean_x}");
        assert!((mean_y - (32.0 + below)).abs() < 0.1, "{shape}: y {mean_y}");
    }
}

/// The area of `shape` of half-size `half` pixels, and how far 4x4 supersampling can miss it:
/// each edge of the outline can shift by up to 1/8 pixel, so an eighth of the perimeter.
fn area_and_tolerance(shape: Shape, half: f64) -> (f64, f64) {
    let perimeter = match shape {
        Shape::Circle => std::f64::consts::TAU * half,
        Shape::Square => 8.0 * half,
        Shape::Triangle => (2.0 + 2.0 * 5f64.sqrt()) * half,
    };
    (shape.area(half), perimeter / 8.0)
}

#[test]
fn objects_move_evenly_and_stay_whole_in_every_frame() {
    let base = fresh_seed();
    let options = SceneOptions {
        two_objects: 0.0,
        ..SceneOptions::default()
    };
    for i in 0..100 {
        let seed = base.wrapping_add(i);
        let scene = Scene::sample(seed, Split::Train, &options).expect("samples");
        let object = scene.objects()[0];
        for (frames, height, width) in [(9, 48, 80), (9, 80, 48), (1, 64, 64)] {
            let video = render(&scene, frames, height, width).expect("renders");
            let half = object.size * height.min(width) as f64;
            let (area, tolerance) = area_and_tolerance(object.shape, half);
            let below = object.shape.centroid_drop(half);
            for f in 0..frames {
                let cover = coverage(&video, f, object.colour, scene.background());
                let total: f64 = cover.iter().sum();
                // the whole shape is drawn: nothing is cut off at the frame's edge
                assert!(
                    (total - area).abs() <= tolerance,
                    "seed {seed} {height}x{width} frame {f}: {total} vs {area}"
                );
                let mean = |position: &dyn Fn(usize) -> f64| {
                    cover
                        .iter()
                        .enumerate()
                        .map(|(i, c)| c * (position(i) + 0.5))
                        .sum::<f64>()
                        / total
                };
                let centre = (mean(&|i| (i % width) as f64), mean(&|i| (i / width) as f64));
                // constant speed from the start (frame 0) to the end (last frame)
                let progress = if frames > 1 {
                    f as f64 / (frames - 1) as f64
                } else {
                    0.0
                };
                let (x, y) = object.centre(progress);
                let expected = (x * width as f64, y * height as f64 + below);
                assert!(
                    (centre.0 - expected.0).abs() < 0.2 && (centre.1 - expected.1).abs() < 0.2,
                    "seed {seed} {height}x{width} frame {f}: {centre:?} vs {expected:?}"
                );
            }
        }
    }
}
