//! Scene sampling: determinism, the caption round trip, the held-out split, the sampling rates
//! and the layout guarantees.

mod train_common;

use std::collections::HashSet;
use train_common::fresh_seed;

use train::data::{
    caption, held_out_combinations, parse, render, Caption, Colour, Combination, Motion, Object,
    Scene, SceneOptions, Shape, Split,
};
use train::Error;

/// A scene, which must sample.
fn sample(seed: u64, split: Split, options: &SceneOptions) -> Scene {
    Scene::sample(seed, split, options).expect("valid options sample")
}

#[test]
fn same_seed_gives_same_scene_and_pixels_other_seeds_differ() {
    let base = fresh_seed();
    let options = SceneOptions::default();
    for i in 0..20 {
        let seed = base.wrapping_add(i);
        for split in [Split::Train, Split::Held] {
            let scene = sample(seed, split, &options);
            let again = sample(seed, split, &options);
            assert_eq!(scene, again, "seed {seed}");
            let video = render(&scene, 9, 32, 48).expect("renders");
            assert_eq!(video, render(&again, 9, 32, 48).expect("renders"));
            let other = sample(seed.wrapping_add(1_000_003), split, &options);
            assert_ne!(scene, other, "seed {seed}");
            assert_ne!(video, render(&other, 9, 32, 48).expect("renders"));
        }
    }
}

#[test]
fn captions_read_back_and_splits_keep_held_out_combinations_apart() {
    let base = fresh_seed();
    let options = SceneOptions::default();
    for i in 0..500 {
        let seed = base.wrapping_add(i);
        for split in [Split::Train, Split::Held] {
            let scene = sample(seed, split, &options);
            let text = caption(&scene);
            let read = parse(&text).unwrap_or_else(|e| panic!("seed {seed}: {text:?}: {e}"));
            assert_eq!(read, scene.caption(), "seed {seed}: {text:?}");
            assert_eq!(read.background(), scene.background());
            let asked: Vec<Combination> = scene.objects().iter().map(Object::combination).collect();
            assert_eq!(read.objects(), &asked[..]);
            match split {
                Split::Train => assert!(
                    asked.iter().all(|c| !c.is_held_out()),
                    "seed {seed}: {text:?} has a held-out object"
                ),
                Split::Held => {
                    assert_eq!(asked.len(), 1, "seed {seed}: {text:?}");
                    assert!(asked[0].is_held_out(), "seed {seed}: {text:?}");
                }
            }
        }
    }
}

#[test]
fn held_out_list_leaves_every_word_and_pair_in_training() {
    let held = held_out_combinations();
    let unique: HashSet<Combination> = held.iter().copied().collect();
    assert_eq!(unique.len(), held.len());
    assert!((7..=9).contains(&held.len()), "about 10% of 72");
    let train: Vec<Combination> = Combination::all().filter(|c| !c.is_held_out()).collect();
    assert_eq!(train.len() + held.len(), 72);
    for c in Colour::OBJECT {
        assert!(train.iter().any(|t| t.colour == c), "{c}");
    }
    for s in Shape::ALL {
        assert!(train.iter().any(|t| t.shape == s), "{s}");
    }
    for m in Motion::ALL {
        assert!(train.iter().any(|t| t.motion == m), "{m}");
    }
    for h in held {
        assert!(train
            .iter()
            .any(|t| t.colour == h.colour && t.shape == h.shape));
        assert!(train
            .iter()
            .any(|t| t.colour == h.colour && t.motion == h.motion));
        assert!(train
            .iter()
            .any(|t| t.shape == h.shape && t.motion == h.motion));
    }
    // sampling reaches every training combination and every held-out one
    let base = fresh_seed();
    let options = SceneOptions::default();
    let mut seen_train = HashSet::new();
    let mut seen_held = HashSet::new();
    for i in 0..3000 {
        let seed = base.wrapping_add(i);
        seen_train.extend(
            sample(seed, Split::Train, &options)
                .objects()
                .iter()
                .map(Object::combination),
        );
        seen_held.extend(
            sample(seed, Split::Held, &options)
                .objects()
                .iter()
                .map(Object::combination),
        );
    }
    assert_eq!(seen_train.len(), train.len());
    assert_eq!(seen_held, unique);
}

#[test]
fn options_set_the_rates_and_bad_options_are_refused() {
    let base = fresh_seed();
    let n = 4000;
    let (mut stated, mut pairs) = (0usize, 0usize);
    for i in 0..n {
        let scene = sample(base.wrapping_add(i), Split::Train, &SceneOptions::default());
        stated += usize::from(scene.background() != Colour::Black);
        pairs += usize::from(scene.objects().len() == 2);
        for o in scene.objects() {
            assert_ne!(o.colour, scene.background());
        }
        if let [a, b] = scene.objects() {
            assert_ne!(a.colour, b.colour);
        }
    }
    // standard errors: 0.0077 and 0.0068
    let stated = stated as f64 / n as f64;
    let pairs = pairs as f64 / n as f64;
    assert!(
        (stated - 0.6).abs() < 0.04,
        "stated background rate {stated}"
    );
    assert!((pairs - 0.25).abs() < 0.035, "two-object rate {pairs}");

    let never = SceneOptions {
        stated_background: 0.0,
        two_objects: 0.0,
    };
    let always = SceneOptions {
        stated_background: 1.0,
        two_objects: 1.0,
    };
    for i in 0..200 {
        let seed = base.wrapping_add(i);
        let plain = sample(seed, Split::Train, &never);
        assert_eq!(
            (plain.background(), plain.objects().len()),
            (Colour::Black, 1)
        );
        let busy = sample(seed, Split::Train, &always);
        assert_ne!(busy.background(), Colour::Black);
        assert_eq!(busy.objects().len(), 2);
        assert_eq!(sample(seed, Split::Held, &always).objects().len(), 1);
    }
    for bad in [-0.1, 1.5, f64::NAN] {
        let options = SceneOptions {
            stated_background: bad,
            ..SceneOptions::default()
        };
        assert!(matches!(
            Scene::sample(1, Split::Train, &options),
            Err(Error::Usage(_))
        ));
        let options = SceneOptions {
            two_objects: bad,
            ..SceneOptions::default()
        };
        assert!(matches!(
            Scene::sample(1, Split::Train, &options),
            Err(Error::Usage(_))
        ));
    }
}

#[test]
fn objects_stay_inside_apart_and_sized() {
    let base = fresh_seed();
    let two = SceneOptions {
        two_objects: 1.0,
        ..SceneOptions::default()
    };
    for i in 0..500 {
        let seed = base.wrapping_add(i);
        let single = sample(seed, Split::Held, &SceneOptions::default());
        let [lone] = single.objects() else {
            panic!("seed {seed}: one object expected");
        };
        assert!((0.15..=0.20).contains(&lone.size), "seed {seed}");
        assert!((0.35..=0.45).contains(&lone.travel), "seed {seed}");
        let pair = sample(seed, Split::Train, &two);
        let [a, b] = pair.objects() else {
            panic!("seed {seed}: two objects expected");
        };
        for o in [lone, a, b] {
            for k in 0..=32 {
                let (x, y) = o.centre(f64::from(k) / 32.0);
                let inside = o.size - 1e-9..=1.0 - o.size + 1e-9;
                assert!(inside.contains(&x) && inside.contains(&y), "seed {seed}");
            }
        }
        for o in [a, b] {
            assert!((0.13..=0.15).contains(&o.size), "seed {seed}");
            assert!((0.35..=0.40).contains(&o.travel), "seed {seed}");
        }
        for k in 0..=64 {
            let t = f64::from(k) / 64.0;
            let (p, q) = (a.centre(t), b.centre(t));
            let apart = (p.0 - q.0).abs().max((p.1 - q.1).abs());
            assert!(
                apart >= a.size + b.size - 1e-9,
                "seed {seed}: boxes overlap at {t}"
            );
        }
    }
}

/// A lone object at the centre of the frame.
fn centred(colour: Colour, shape: Shape) -> Object {
    Object {
        colour,
        shape,
        motion: Motion::Right,
        start: (0.5, 0.5),
        size: 0.2,
        travel: 0.0,
    }
}

#[test]
fn scenes_with_bad_objects_are_refused() {
    let ok = centred(Colour::Red, Shape::Circle);
    assert!(Scene::new(vec![ok], Colour::Black).is_ok());
    let outside = [
        Object {
            start: (0.1, 0.5),
            ..ok
        },
        Object { travel: 0.4, ..ok },
        Object { size: 0.0, ..ok },
        Object {
            size: f64::NAN,
            ..ok
        },
        Object {
            start: (f64::INFINITY, 0.5),
            ..ok
        },
        Object { travel: -0.1, ..ok },
    ];
    for object in outside {
        assert!(
            matches!(
                Scene::new(vec![object], Colour::Black),
                Err(Error::Usage(_))
            ),
            "{object:?}"
        );
    }
    let blue = centred(Colour::Blue, Shape::Square);
    let refused = [
        (vec![], Colour::Black),
        (
            vec![ok, blue, centred(Colour::Green, Shape::Circle)],
            Colour::Black,
        ),
        (vec![ok, ok], Colour::Black),
        (vec![ok], Colour::Red),
        (vec![centred(Colour::Gray, Shape::Circle)], Colour::Black),
    ];
    for (objects, background) in refused {
        assert!(
            matches!(Scene::new(objects, background), Err(Error::Caption(_))),
            "{background}"
        );
    }
}

#[test]
fn placed_scenes_show_their_caption() {
    let base = fresh_seed();
    for (i, text) in [
        "a red circle moves to the right",
        "a blue square moves up on a yellow background",
        "a white triangle moves down and a purple circle moves to the left on a gray background",
        "a green square moves to the left and a yellow triangle moves up",
    ]
    .into_iter()
    .enumerate()
    {
        let asked: Caption = parse(text).expect("valid caption");
        let scene = Scene::place(&asked, base.wrapping_add(i as u64)).expect("places");
        assert_eq!(scene.caption(), asked);
        assert_eq!(caption(&scene), text);
    }
}
