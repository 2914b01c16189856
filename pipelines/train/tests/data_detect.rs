//! The detector and judge on ground-truth renders: right on clean, noisy and blurred videos,
//! unmoved by stray pixels, and wrong (so the judge fails) on a video of another scene.

mod train_common;

use pipelines::t2v::noise::NoiseGenerator;
use train::data::{
    render, Caption, Colour, Combination, Motion, Object, Scene, SceneOptions, Shape, Split, Video,
};
use train::eval::{detect, judge, judge_detections, Accuracy, Judgement};
use train_common::fresh_seed;

/// Frames, height and width of the test videos.
const SIZE: (usize, usize, usize) = (17, 64, 64);

/// The scene for `seed`: a single object from either split, or two objects.
fn scene(seed: u64, two_objects: bool) -> Scene {
    let split = if two_objects || seed.is_multiple_of(2) {
        Split::Train
    } else {
        Split::Held
    };
    let options = SceneOptions {
        two_objects: if two_objects { 1.0 } else { 0.0 },
        ..SceneOptions::default()
    };
    Scene::sample(seed, split, &options).expect("samples")
}

/// `scene` drawn at [`SIZE`].
fn draw(scene: &Scene) -> Video {
    render(scene, SIZE.0, SIZE.1, SIZE.2).expect("renders")
}

/// `video` after a 3x3 box blur (over the neighbours inside the frame) and then uniform noise
/// of up to +-`amplitude` per channel.
fn blur_and_noise(video: &Video, amplitude: i32, seed: u64) -> Video {
    let (h, w) = (video.height(), video.width());
    let mut noise = NoiseGenerator::new(seed);
    let span = u64::try_from(2 * amplitude + 1).expect("positive");
    let mut rgb = Vec::with_capacity(video.rgb().len());
    for f in 0..video.frames() {
        let frame = video.frame(f).expect("frame exists");
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let (mut sum, mut count) = (0u32, 0u32);
                    for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                        for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                            sum += u32::from(frame[(ny * w + nx) * 3 + c]);
                            count += 1;
                        }
                    }
                    let blurred = f64::from(sum) / f64::from(count);
                    let shift = (noise.next_u64() % span) as f64 - f64::from(amplitude);
                    rgb.push((blurred + shift).round().clamp(0.0, 255.0) as u8);
                }
            }
        }
    }
    Video::new(video.frames(), h, w, rgb).expect("same size")
}

/// Judges `count` fresh scenes (videos made by `corrupt`); returns the accuracy and checks that
/// exactly the scene's colours are detected.
fn judge_fresh(count: u64, two_objects: bool, corrupt: impl Fn(Video, u64) -> Video) -> Accuracy {
    let base = fresh_seed();
    let mut accuracy = Accuracy::default();
    for i in 0..count {
        let seed = base.wrapping_add(i);
        let scene = scene(seed, two_objects);
        let video = corrupt(draw(&scene), seed);
        let detections = detect(&video, scene.background());
        let mut expected: Vec<Colour> = scene.objects().iter().map(|o| o.colour).collect();
        let mut found: Vec<Colour> = detections.iter().map(|d| d.colour).collect();
        expected.sort();
        found.sort();
        assert_eq!(found, expected, "seed {seed}: {}", scene.caption());
        let judgements = judge_detections(&scene.caption(), &detections);
        if !judgements.iter().all(Judgement::all) {
            let read: Vec<_> = detections
                .iter()
                .map(|d| (d.colour, d.shape, d.motion))
                .collect();
            println!("seed {seed}: {} read as {read:?}", scene.caption());
        }
        accuracy.extend(&judgements);
    }
    println!("{accuracy}");
    accuracy
}

/// Colour and motion must be always right; shape may miss at most 2% (a blob a few pixels wide
/// is a coarse outline), though on these renders it is expected to be always right too.
fn assert_accurate(accuracy: &Accuracy) {
    assert_eq!(accuracy.colour_rate(), Some(1.0), "{accuracy}");
    assert_eq!(accuracy.motion_rate(), Some(1.0), "{accuracy}");
    assert!(
        accuracy.shape_rate().is_some_and(|r| r >= 0.98),
        "{accuracy}"
    );
}

#[test]
fn clean_single_object_renders_are_judged_right() {
    assert_accurate(&judge_fresh(200, false, |video, _| video));
}

#[test]
fn noisy_blurred_single_object_renders_are_judged_right() {
    assert_accurate(&judge_fresh(200, false, |video, seed| {
        blur_and_noise(&video, 30, seed)
    }));
}

#[test]
fn two_object_renders_are_judged_right_clean_and_noisy() {
    assert_accurate(&judge_fresh(100, true, |video, _| video));
    assert_accurate(&judge_fresh(100, true, |video, seed| {
        blur_and_noise(&video, 30, seed)
    }));
}

#[test]
fn detections_follow_the_rendered_geometry() {
    let base = fresh_seed();
    for i in 0..50 {
        let seed = base.wrapping_add(i);
        let scene = scene(seed, false);
        let object = scene.objects()[0];
        let detections = detect(&draw(&scene), scene.background());
        let [found] = &detections[..] else {
            panic!("seed {seed}: {detections:?}");
        };
        let half = object.size * 64.0;
        let below = object.shape.centroid_drop(half);
        for f in 0..SIZE.0 {
            let (x, y) = object.centre(f as f64 / (SIZE.0 - 1) as f64);
            let (cx, cy) = found.centroid[f].expect("seen in every frame");
            assert!(
                (cx - x * 64.0).abs() < 0.75 && (cy - y * 64.0 - below).abs() < 0.75,
                "seed {seed} frame {f}: ({cx}, {cy})"
            );
            // the blob is the shape, less blended edge pixels more than MAX_COLOUR_DISTANCE from
            // the object's colour (white on black keeps coverage above 0.77), and without pixels
            // covered less than half; 4x4 supersampling moves coverage by up to 1/8 more
            let area = found.area[f] as f64;
            let expected = object.shape.area(half);
            let rim = perimeter(object.shape, half);
            assert!(
                area > expected - 0.9 * rim && area < expected + 0.625 * rim,
                "seed {seed} frame {f}: area {area} vs {expected}"
            );
        }
    }
}

/// The perimeter of `shape` of size `half`.
fn perimeter(shape: Shape, half: f64) -> f64 {
    match shape {
        Shape::Circle => std::f64::consts::TAU * half,
        Shape::Square => 8.0 * half,
        Shape::Triangle => (2.0 + 2.0 * 5f64.sqrt()) * half,
    }
}

/// An element of `items` other than `current`, chosen by `seed`.
fn another<T: Copy + PartialEq>(items: &[T], current: T, seed: u64) -> T {
    let others: Vec<T> = items.iter().copied().filter(|&t| t != current).collect();
    others[(seed % others.len() as u64) as usize]
}

#[test]
fn videos_of_other_scenes_fail_the_judge() {
    let base = fresh_seed();
    let right = Judgement {
        colour: true,
        shape: true,
        motion: true,
    };
    for i in 0..100 {
        let seed = base.wrapping_add(i);
        let asked = scene(seed, false).caption();
        let [object] = asked.objects() else {
            panic!("seed {seed}: one object expected");
        };
        let background = asked.background();
        let colours: Vec<Colour> = Colour::OBJECT
            .into_iter()
            .filter(|&c| c != background)
            .collect();
        let changes = [
            (
                Combination {
                    motion: another(&Motion::ALL, object.motion, seed),
                    ..*object
                },
                Judgement {
                    motion: false,
                    ..right
                },
            ),
            (
                Combination {
                    shape: another(&Shape::ALL, object.shape, seed),
                    ..*object
                },
                Judgement {
                    shape: false,
                    ..right
                },
            ),
            (
                Combination {
                    colour: another(&colours, object.colour, seed),
                    ..*object
                },
                Judgement::default(),
            ),
        ];
        for (shown, expected) in changes {
            let other = Caption::new(vec![shown], background).expect("valid caption");
            let video = draw(&Scene::place(&other, seed).expect("places"));
            assert_eq!(
                judge(&asked, &video),
                vec![expected],
                "seed {seed}: asked {asked}, shown {other}"
            );
        }
    }
}

#[test]
fn a_still_object_has_no_motion() {
    let object = Object {
        colour: Colour::Yellow,
        shape: Shape::Square,
        motion: Motion::Up,
        start: (0.5, 0.5),
        size: 0.18,
        travel: 0.05,
    };
    let scene = Scene::new(vec![object], Colour::Gray).expect("valid scene");
    let detections = detect(&draw(&scene), Colour::Gray);
    assert_eq!(detections.len(), 1);
    assert_eq!(detections[0].shape, Some(Shape::Square));
    assert_eq!(detections[0].motion, None);
    let judged = judge(&scene.caption(), &draw(&scene));
    assert_eq!(
        judged,
        vec![Judgement {
            colour: true,
            shape: true,
            motion: false
        }]
    );
}

#[test]
fn stray_pixels_change_nothing() {
    let base = fresh_seed();
    for i in 0..50 {
        let seed = base.wrapping_add(i);
        let scene = scene(seed, false);
        let clean = draw(&scene);
        let mut rgb = clean.rgb().to_vec();
        let mut noise = NoiseGenerator::new(seed);
        // 40 specks per frame, single pixels or 2x2 blocks, of random object colours
        let (f, h, w) = SIZE;
        for frame in 0..f {
            for _ in 0..40 {
                let colour = Colour::OBJECT[(noise.next_u64() % 6) as usize].rgb();
                let x = (noise.next_u64() % (w as u64 - 1)) as usize;
                let y = (noise.next_u64() % (h as u64 - 1)) as usize;
                let block = 1 + (noise.next_u64() % 2) as usize;
                for dy in 0..block {
                    for dx in 0..block {
                        let at = ((frame * h + y + dy) * w + x + dx) * 3;
                        rgb[at..at + 3].copy_from_slice(&colour);
                    }
                }
            }
        }
        let specked = Video::new(f, h, w, rgb).expect("same size");
        let before: Vec<(Colour, Option<Shape>, Option<Motion>)> =
            detect(&clean, scene.background())
                .iter()
                .map(|d| (d.colour, d.shape, d.motion))
                .collect();
        let after: Vec<(Colour, Option<Shape>, Option<Motion>)> =
            detect(&specked, scene.background())
                .iter()
                .map(|d| (d.colour, d.shape, d.motion))
                .collect();
        assert_eq!(before, after, "seed {seed}: {}", scene.caption());
        assert!(judge(&scene.caption(), &specked).iter().all(Judgement::all));
    }
}

#[test]
fn a_blank_video_shows_nothing() {
    let video = Video::new(3, 16, 16, vec![128; 3 * 16 * 16 * 3]).expect("right size");
    assert!(detect(&video, Colour::Gray).is_empty());
    let asked = train::data::parse("a red circle moves up on a gray background").expect("parses");
    assert_eq!(judge(&asked, &video), vec![Judgement::default()]);
}
