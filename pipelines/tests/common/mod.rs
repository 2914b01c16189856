//! Shared helpers of the pipeline's integration tests.

use pipelines::t2v::ModelSpec;

/// The tiny random model the tests run on, assets/tiny-wan (the default model is the trained
/// one, too slow for tests).
pub fn tiny() -> ModelSpec {
    ModelSpec {
        folder: Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/tiny-wan")),
        ..Default::default()
    }
}
