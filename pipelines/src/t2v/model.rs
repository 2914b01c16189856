//! Where a model's parts are: a diffusers Wan pipeline folder, explicit per-component paths (the
//! original release's files), or the embedded default model.

use crate::error::{fail, ResultExt};
use crate::schedulers::SchedulerConfig;
use crate::t2v::settings::SettingOverrides;
use crate::Result;
use dit::{KeyLayout, WanConfig};
use std::fmt;
use std::path::{Path, PathBuf};

/// Environment variable naming the default model folder (overrides the embedded one).
pub const DEFAULT_MODEL_ENV: &str = "VDIT_DEFAULT_MODEL";

/// The embedded default model's folder name under `assets/`.
const DEFAULT_MODEL_DIR: &str = "shapes-wan";

/// The parts of a Wan text-to-video pipeline that are loaded from disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// The diffusion transformer.
    Transformer,
    /// The video VAE.
    Vae,
    /// The UMT5 text encoder.
    TextEncoder,
    /// The T5 tokenizer (`tokenizer.json`).
    Tokenizer,
}

impl Component {
    /// Its sub-folder in a diffusers pipeline folder.
    pub fn folder(self) -> &'static str {
        match self {
            Self::Transformer => "transformer",
            Self::Vae => "vae",
            Self::TextEncoder => "text_encoder",
            Self::Tokenizer => "tokenizer",
        }
    }

    /// The command-line flag that names it.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Transformer => "--transformer PATH",
            Self::Vae => "--vae PATH",
            Self::TextEncoder => "--text-encoder DIR",
            Self::Tokenizer => "--tokenizer PATH",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Transformer => "transformer",
            Self::Vae => "VAE",
            Self::TextEncoder => "text encoder",
            Self::Tokenizer => "tokenizer",
        })
    }
}

/// What the user named: a pipeline folder and/or per-component paths (all optional).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelSpec {
    /// A diffusers Wan pipeline folder (`model_index.json`, `transformer/`, `vae/`, ...).
    pub folder: Option<PathBuf>,
    /// Transformer weights (folder or .safetensors file), overriding the folder's.
    pub transformer: Option<PathBuf>,
    /// VAE weights (folder or .safetensors file), overriding the folder's.
    pub vae: Option<PathBuf>,
    /// Text encoder folder (transformers' UMT5EncoderModel), overriding the folder's.
    pub text_encoder: Option<PathBuf>,
    /// Tokenizer folder or `tokenizer.json`, overriding the folder's.
    pub tokenizer: Option<PathBuf>,
}

impl ModelSpec {
    /// Finds every component. With nothing named, the default model is used; with only some
    /// components named, the others are missing (reported when needed), never taken from the
    /// default model. Paths named explicitly must exist.
    pub fn resolve(&self) -> Result<ModelPaths> {
        let explicit = [
            (Component::Transformer, &self.transformer),
            (Component::Vae, &self.vae),
            (Component::TextEncoder, &self.text_encoder),
            (Component::Tokenizer, &self.tokenizer),
        ];
        for (component, path) in &explicit {
            if let Some(path) = path {
                if !path.exists() {
                    fail!(
                        Model,
                        "{} {} does not exist (given with {})",
                        component,
                        path.display(),
                        component.flag()
                    );
                }
            }
        }
        let folder = match &self.folder {
            Some(folder) => Some(check_pipeline_folder(folder)?),
            None if explicit.iter().all(|(_, p)| p.is_none()) => Some(default_model_folder()?),
            None => None,
        };
        let pick = |component: Component, given: &Option<PathBuf>| match given {
            Some(path) => Located::Found(path.clone()),
            None => match &folder {
                Some(folder) => {
                    let path = folder.join(component.folder());
                    if path.exists() {
                        Located::Found(path)
                    } else {
                        Located::Missing(Some(path))
                    }
                }
                None => Located::Missing(None),
            },
        };
        let optional_file = |relative: &str| {
            folder
                .as_ref()
                .map(|f| f.join(relative))
                .filter(|p| p.is_file())
        };
        Ok(ModelPaths {
            transformer: pick(Component::Transformer, &self.transformer),
            vae: pick(Component::Vae, &self.vae),
            text_encoder: pick(Component::TextEncoder, &self.text_encoder),
            tokenizer: pick(Component::Tokenizer, &self.tokenizer),
            scheduler_config: optional_file("scheduler/scheduler_config.json"),
            generation_config: optional_file("generation_config.json"),
            pipeline_class: match &folder {
                Some(folder) => pipeline_class(folder)?,
                None => None,
            },
            folder,
        })
    }
}

/// A component's path, or where it was looked for.
#[derive(Clone, Debug, PartialEq)]
pub enum Located {
    /// It is here.
    Found(PathBuf),
    /// Not found; the path looked at, if there was a folder to look in.
    Missing(Option<PathBuf>),
}

/// Where every part of a model is (components may be missing until they are needed).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelPaths {
    /// The pipeline folder, if one was used.
    pub folder: Option<PathBuf>,
    /// The transformer.
    pub transformer: Located,
    /// The VAE.
    pub vae: Located,
    /// The text encoder.
    pub text_encoder: Located,
    /// The tokenizer.
    pub tokenizer: Located,
    /// `scheduler/scheduler_config.json`, if the folder has one.
    pub scheduler_config: Option<PathBuf>,
    /// `generation_config.json` (vdit's default settings for the model), if the folder has one.
    pub generation_config: Option<PathBuf>,
    /// The pipeline class `model_index.json` names (`WanPipeline`, FastVideo's
    /// `WanDMDPipeline`, ...), if it names one.
    pub pipeline_class: Option<String>,
}

/// The pipeline class of FastVideo's DMD-distilled Wan folders (FastWan).
pub const DMD_PIPELINE_CLASS: &str = "WanDMDPipeline";

impl ModelPaths {
    /// The path of `component`, or a one-line error saying where it was looked for and which
    /// flag provides it.
    pub fn get(&self, component: Component) -> Result<&Path> {
        let located = match component {
            Component::Transformer => &self.transformer,
            Component::Vae => &self.vae,
            Component::TextEncoder => &self.text_encoder,
            Component::Tokenizer => &self.tokenizer,
        };
        match located {
            Located::Found(path) => Ok(path),
            Located::Missing(Some(looked)) => fail!(
                Model,
                "no {component}: {} does not exist; pass {}",
                looked.display(),
                component.flag()
            ),
            Located::Missing(None) => fail!(
                Model,
                "no {component} given: pass {} or a pipeline folder with --model DIR",
                component.flag()
            ),
        }
    }

    /// Checks that every component in `needed` is there (the first missing one is reported).
    pub fn require(&self, needed: &[Component]) -> Result<()> {
        needed.iter().try_for_each(|&c| self.get(c).map(|_| ()))
    }

    /// The folder's scheduler config, else Wan 2.1's (UniPC, flow shift 3.0).
    pub fn scheduler_config(&self) -> Result<SchedulerConfig> {
        match &self.scheduler_config {
            Some(path) => SchedulerConfig::from_file(path),
            None => Ok(SchedulerConfig::wan_default(3.0)),
        }
    }

    /// The folder's default settings: FastWan's for a DMD pipeline folder, under the folder's
    /// `generation_config.json`; and the default attention that file names, if any.
    pub fn generation_defaults(&self) -> Result<(SettingOverrides, Option<String>)> {
        let base = match self.pipeline_class.as_deref() {
            Some(DMD_PIPELINE_CLASS) => SettingOverrides::fastwan(),
            _ => SettingOverrides::default(),
        };
        match &self.generation_config {
            Some(path) => {
                let (file, attention) = SettingOverrides::from_file(path)?;
                Ok((base.then(&file), attention))
            }
            None => Ok((base, None)),
        }
    }

    /// The transformer's configuration and key layout, and whether it has VSA's gate weights,
    /// read without loading its weights (the safetensors headers are memory-mapped):
    /// `config.json` beside the weights, else inferred.
    pub fn transformer_config(&self) -> Result<TransformerInfo> {
        let path = self.get(Component::Transformer)?;
        let checkpoint = vdit_core::Checkpoint::open(path)
            .with_context(|| format!("cannot open the transformer {}", path.display()))?;
        let layout = KeyLayout::detect(&checkpoint)?;
        let vsa_gates = checkpoint.contains(&layout.rename()(VSA_GATE_PROBE));
        let (config, _) = dit::load::read_config(path, &checkpoint, &layout)?;
        Ok(TransformerInfo {
            config,
            layout,
            vsa_gates,
        })
    }
}

/// A weight only transformers fine-tuned with VSA have (its gate of the coarse branch).
const VSA_GATE_PROBE: &str = "blocks.0.attn1.to_gate_compress.weight";

/// What a transformer's headers say about it.
#[derive(Clone, Debug)]
pub struct TransformerInfo {
    /// Its configuration.
    pub config: WanConfig,
    /// Its key layout.
    pub layout: KeyLayout,
    /// Whether it was trained with VSA (it has the gate weights of VSA's coarse branch).
    pub vsa_gates: bool,
}

/// The `_class_name` of `folder/model_index.json`, if it names one.
fn pipeline_class(folder: &Path) -> Result<Option<String>> {
    let path = folder.join("model_index.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let index: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?;
    Ok(index
        .get("_class_name")
        .and_then(|c| c.as_str())
        .map(str::to_string))
}

/// Checks that `folder` looks like a diffusers pipeline folder.
fn check_pipeline_folder(folder: &Path) -> Result<PathBuf> {
    if folder.is_file() {
        fail!(
            Model,
            "--model {} is a file: give a diffusers Wan pipeline folder (with model_index.json), \
             or a single transformer checkpoint with --transformer FILE",
            folder.display()
        );
    }
    if std::fs::symlink_metadata(folder).is_ok() && std::fs::metadata(folder).is_err() {
        fail!(
            Model,
            "--model {} is a symbolic link that leads nowhere (a loop or a missing target)",
            folder.display()
        );
    }
    if !folder.is_dir() {
        fail!(
            Model,
            "model folder {} does not exist (give a diffusers Wan pipeline folder with \
             model_index.json)",
            folder.display()
        );
    }
    let index = folder.join("model_index.json");
    if !index.is_file() {
        fail!(
            Model,
            "{} is not a diffusers pipeline folder: no model_index.json (for single files use \
             --transformer, --vae, --text-encoder and --tokenizer)",
            folder.display()
        );
    }
    Ok(folder.to_path_buf())
}

/// The default model: `$VDIT_DEFAULT_MODEL`, else `assets/shapes-wan` found next to the
/// executable (`assets/` beside it, or the source tree two or three levels up, as for
/// `target/release/vdit`), else in the source tree this binary was built from.
pub fn default_model_folder() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(DEFAULT_MODEL_ENV) {
        let dir = PathBuf::from(dir);
        return check_pipeline_folder(&dir)
            .with_context(|| format!("{DEFAULT_MODEL_ENV} names {}", dir.display()));
    }
    let mut candidates = Vec::new();
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        for up in [".", "..", "../..", "../../.."] {
            candidates.push(exe_dir.join(up).join("assets").join(DEFAULT_MODEL_DIR));
        }
    }
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("assets")
            .join(DEFAULT_MODEL_DIR),
    );
    if let Some(found) = candidates
        .iter()
        .find(|c| c.join("model_index.json").is_file())
    {
        return Ok(found.canonicalize().unwrap_or_else(|_| found.clone()));
    }
    let looked: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    fail!(
        Model,
        "the default model assets/{DEFAULT_MODEL_DIR} was not found (looked in {}): pass --model \
         DIR or set {DEFAULT_MODEL_ENV}",
        looked.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Components given alone do not pull the rest from the default model; what is missing is
    /// named with its flag.
    #[test]
    fn explicit_components_only() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ModelSpec {
            transformer: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let paths = spec.resolve().unwrap();
        assert_eq!(paths.folder, None);
        assert_eq!(paths.get(Component::Transformer).unwrap(), dir.path());
        let err = paths.get(Component::Vae).unwrap_err().to_string();
        assert!(err.contains("no VAE given: pass --vae PATH"), "{err}");
    }

    /// A folder without a component says where it looked.
    #[test]
    fn folder_missing_a_component() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model_index.json"), "{}").unwrap();
        std::fs::create_dir(dir.path().join("transformer")).unwrap();
        let spec = ModelSpec {
            folder: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let paths = spec.resolve().unwrap();
        assert!(paths.get(Component::Transformer).is_ok());
        let err = paths.get(Component::TextEncoder).unwrap_err().to_string();
        let looked = dir.path().join("text_encoder");
        assert!(
            err.contains(&format!(
                "no text encoder: {} does not exist",
                looked.display()
            )) && err.contains("--text-encoder DIR"),
            "{err}"
        );
        let err = ModelSpec {
            folder: Some(dir.path().join("transformer")),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(err.contains("no model_index.json"), "{err}");
    }

    /// The embedded default model is found from the test binary.
    #[test]
    fn default_model_is_found() {
        let paths = ModelSpec::default().resolve().unwrap();
        let folder = paths.folder.clone().unwrap();
        assert!(
            folder.ends_with("assets/shapes-wan"),
            "{}",
            folder.display()
        );
        paths
            .require(&[
                Component::Transformer,
                Component::Vae,
                Component::TextEncoder,
                Component::Tokenizer,
            ])
            .unwrap();
        assert!(paths.generation_config.is_some() && paths.scheduler_config.is_some());
    }
}
