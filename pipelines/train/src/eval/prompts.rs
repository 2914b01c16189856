//! The captions an evaluation asks for: distinct captions of scenes drawn from one split.

use crate::data::{caption, Scene, SceneOptions, Split};
use crate::error::{Error, Result};
use std::collections::BTreeSet;

/// Most scenes drawn while looking for distinct captions, per caption asked.
const DRAWS_PER_CAPTION: u64 = 200;

/// Up to `count` distinct captions of `split`'s scenes drawn from `seed` (fewer when the split
/// has fewer distinct captions), in the order first drawn.
pub fn eval_captions(split: Split, count: usize, seed: u64) -> Result<Vec<String>> {
    if count == 0 {
        return Err(Error::Usage(
            "an evaluation needs at least one caption: give --count 1 or more".to_string(),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut captions = Vec::with_capacity(count);
    let options = SceneOptions::default();
    for draw in 0..DRAWS_PER_CAPTION.saturating_mul(count as u64) {
        let scene = Scene::sample(crate::clips::scene_seed(seed, draw), split, &options)?;
        let text = caption(&scene);
        if seen.insert(text.clone()) {
            captions.push(text);
            if captions.len() == count {
                break;
            }
        }
    }
    Ok(captions)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held-out captions are distinct, parse, and name a held-out combination.
    #[test]
    fn held_out_captions_are_distinct_and_held_out() -> Result<()> {
        let captions = eval_captions(Split::Held, 24, 3)?;
        assert_eq!(captions.len(), 24);
        assert_eq!(captions.iter().collect::<BTreeSet<_>>().len(), 24);
        for text in &captions {
            let parsed = crate::data::parse(text)?;
            assert!(parsed.objects().iter().all(|o| o.is_held_out()), "{text}");
        }
        Ok(())
    }
}
