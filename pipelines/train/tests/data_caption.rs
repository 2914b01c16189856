//! The caption grammar: the example prompts, tolerated variations, errors that name the bad
//! word, and the text round trip over every caption.

use train::data::{parse, Caption, Colour, Combination, Motion, Shape};
use train::Error;

/// The one combination of these words.
fn combo(colour: Colour, shape: Shape, motion: Motion) -> Combination {
    Combination {
        colour,
        shape,
        motion,
    }
}

#[test]
fn example_prompts_parse() {
    let red = parse("a red circle moves to the right").expect("parses");
    assert_eq!(
        red.objects(),
        &[combo(Colour::Red, Shape::Circle, Motion::Right)]
    );
    assert_eq!(red.background(), Colour::Black);
    let blue = parse("a blue square moves up on a yellow background").expect("parses");
    assert_eq!(
        blue.objects(),
        &[combo(Colour::Blue, Shape::Square, Motion::Up)]
    );
    assert_eq!(blue.background(), Colour::Yellow);
    let pair = parse(
        "a white triangle moves down and a green circle moves to the left on a gray background",
    )
    .expect("parses");
    assert_eq!(
        pair.objects(),
        &[
            combo(Colour::White, Shape::Triangle, Motion::Down),
            combo(Colour::Green, Shape::Circle, Motion::Left)
        ]
    );
    assert_eq!(pair.background(), Colour::Gray);
    let black = parse("a purple triangle moves to the left on a black background").expect("parses");
    assert_eq!(black.background(), Colour::Black);
    assert_eq!(black.to_string(), "a purple triangle moves to the left");
}

#[test]
fn case_whitespace_and_a_trailing_period_are_ignored() {
    let expected = parse("a blue square moves up on a yellow background").expect("parses");
    for variant in [
        "A Blue SQUARE moves UP on a Yellow Background",
        "  a blue square moves up on a yellow background.  ",
        "a\tblue  square\nmoves up   on a yellow background .",
        "a blue square moves up on a yellow background.",
    ] {
        assert_eq!(parse(variant).expect(variant), expected, "{variant:?}");
    }
}

#[test]
fn malformed_captions_name_the_bad_word() {
    let cases = [
        ("a red circel moves up", "\"circel\"", "a shape"),
        ("a black circle moves up", "\"black\"", "an object colour"),
        ("a pink circle moves up", "\"pink\"", "an object colour"),
        ("a red circle moves sideways", "\"sideways\"", "\"to\""),
        (
            "a red circle moves to the top",
            "\"top\"",
            "\"right\" or \"left\"",
        ),
        ("a red circle runs up", "\"runs\"", "\"moves\""),
        ("red circle moves up", "\"red\"", "\"a\""),
        ("an red circle moves up", "\"an\"", "\"a\""),
        (
            "a red circle moves up on a pink background",
            "\"pink\"",
            "a colour",
        ),
        (
            "a red circle moves up on the blue background",
            "\"the\"",
            "\"a\"",
        ),
        (
            "a red circle moves up on a blue floor",
            "\"floor\"",
            "\"background\"",
        ),
        (
            "a red circle moves up quickly",
            "\"quickly\"",
            "\"and\", \"on\"",
        ),
        (
            "a red circle moves up on a blue background please",
            "\"please\"",
            "the end",
        ),
        (
            "a red circle moves up and a blue square moves down and a green circle moves up",
            "\"and\"",
            "\"on\" or the end",
        ),
        ("a red circle moves up..", "\"up.\"", "\"up\" or \"down\""),
        ("a red circle moves up and", "after \"and\"", "\"a\""),
        ("a red circle moves to the", "after \"the\"", "\"right\""),
        ("a red circle", "after \"circle\"", "\"moves\""),
        ("   ", "empty", "\"a\""),
        (
            "a red circle moves up on a red background",
            "red",
            "background",
        ),
        (
            "a red circle moves up and a red square moves down",
            "red",
            "another colour",
        ),
    ];
    for (text, word, expected) in cases {
        match parse(text) {
            Err(Error::Caption(message)) => {
                assert!(message.contains(word), "{text:?}: {message}");
                assert!(message.contains(expected), "{text:?}: {message}");
                assert!(!message.contains('\n'), "{text:?}: {message}");
            }
            other => panic!("{text:?} gave {other:?}"),
        }
    }
}

#[test]
fn every_caption_reads_back_from_its_text() {
    let mut captions = 0;
    let all: Vec<Combination> = Combination::all().collect();
    assert_eq!(all.len(), 72);
    for background in Colour::BACKGROUND {
        for (i, first) in all.iter().enumerate() {
            let mut object_lists = vec![vec![*first]];
            object_lists.extend(all[i + 1..].iter().map(|second| vec![*first, *second]));
            for objects in object_lists {
                let Ok(asked) = Caption::new(objects.clone(), background) else {
                    let clash = objects.iter().any(|o| o.colour == background)
                        || objects.len() == 2 && objects[0].colour == objects[1].colour;
                    assert!(clash, "{objects:?} on {background} refused");
                    continue;
                };
                let text = asked.to_string();
                assert_eq!(parse(&text).expect("parses"), asked, "{text:?}");
                captions += 1;
            }
        }
    }
    // black or gray: 72 singles + (72^2 - 6 * 12^2) / 2 = 2160 pairs;
    // an object colour: 60 singles + (60^2 - 5 * 12^2) / 2 = 1440 pairs
    assert_eq!(captions, 2 * (72 + 2160) + 6 * (60 + 1440));
}
