//! Every file vdit reads is untrusted: each loader and parser gets a few hundred random
//! mutations of a valid file (bit flips, bytes set to 0x00 or 0xFF, truncation, inserted
//! garbage, numbers replaced by huge or negative ones, repeated slices) and must answer with an
//! error or a value, never a panic or an abort. The seed is fresh each run and printed; set
//! VDIT_FUZZ_SEED to replay one.

mod common;
mod t2v_common;

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use t2v_common::small;
use vdit::video::{Frame, PngFolderReader, VideoWriter, Y4mReader};

/// Mutations per input kind.
const CASES: usize = 200;

/// xorshift64*: a small generator, enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seed() -> u64 {
    std::env::var("VDIT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

/// One random mutation of `base`.
fn mutate(base: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut bytes = base.to_vec();
    if bytes.is_empty() {
        return bytes;
    }
    match rng.below(7) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
            }
        }
        1 => {
            let at = rng.below(bytes.len());
            bytes[at] = [0x00, 0xff, rng.next() as u8][rng.below(3)];
        }
        2 => bytes.truncate(rng.below(bytes.len())),
        3 => {
            let at = rng.below(bytes.len());
            let garbage: Vec<u8> = (0..1 + rng.below(64)).map(|_| rng.next() as u8).collect();
            bytes.splice(at..at, garbage);
        }
        4 => {
            // A run of digits becomes a huge, zero or negative number.
            let starts: Vec<usize> = (0..bytes.len())
                .filter(|&i| {
                    bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_digit())
                })
                .collect();
            if let Some(&start) = starts.get(rng.below(starts.len())) {
                let end = (start..bytes.len())
                    .find(|&i| !bytes[i].is_ascii_digit())
                    .unwrap_or(bytes.len());
                let new: &[u8] = [
                    b"18446744073709551616".as_slice(),
                    b"4294967296",
                    b"100000",
                    b"65536",
                    b"0",
                    b"-1",
                    b"1e308",
                ][rng.below(7)];
                bytes.splice(start..end, new.iter().copied());
            }
        }
        5 => {
            let from = rng.below(bytes.len());
            let len = rng.below((bytes.len() - from).min(256)) + 1;
            let slice = bytes[from..from + len].to_vec();
            let at = rng.below(bytes.len());
            bytes.splice(at..at, slice);
        }
        _ => {
            let at = rng.below(bytes.len());
            bytes[at] = b"{}[],:\"0-"[rng.below(9)];
        }
    }
    bytes
}

/// Feeds `CASES` mutations of `base`, written to `path`, to `load` (true when the input was
/// accepted); fails naming the seed and the cases that panicked.
fn fuzz(name: &str, base: &[u8], path: &Path, load: impl Fn(&Path) -> bool) {
    let seed = seed();
    let mut rng = Rng(seed);
    let (mut panicked, mut accepted) = (Vec::new(), 0);
    // The valid file must load (else the mutations test nothing).
    std::fs::write(path, base).unwrap();
    assert!(load(path), "{name}: the unmutated file is refused");
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for case in 0..CASES {
        let bytes = mutate(base, &mut rng);
        std::fs::write(path, &bytes).unwrap();
        match catch_unwind(AssertUnwindSafe(|| load(path))) {
            Ok(ok) => accepted += usize::from(ok),
            Err(_) => panicked.push(case),
        }
    }
    std::panic::set_hook(hook);
    assert!(
        panicked.is_empty(),
        "{name}: cases {panicked:?} panicked (VDIT_FUZZ_SEED={seed})"
    );
    println!("{name}: {CASES} mutations ({accepted} accepted), none panicked (seed {seed})");
}

/// A loader under test: true when it accepted the file.
type Loader = fn(&Path) -> bool;

fn tiny(part: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets/tiny-wan")
        .join(part)
}

#[test]
fn safetensors_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let tensors = HashMap::from([
        (
            "a.weight".to_string(),
            Tensor::arange(0f32, 12.0, &Device::Cpu)
                .unwrap()
                .reshape((3, 4))
                .unwrap(),
        ),
        (
            "b.bias".to_string(),
            Tensor::ones(5, DType::BF16, &Device::Cpu).unwrap(),
        ),
    ]);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let base = std::fs::read(&path).unwrap();
    fuzz("safetensors", &base, &path, |p| {
        vdit_core::Checkpoint::open(p).is_ok_and(|checkpoint| {
            checkpoint
                .keys()
                .iter()
                .all(|key| checkpoint.load_raw(key, &Device::Cpu).is_ok())
        })
    });
}

#[test]
fn model_configs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let cases: [(&str, &str, Loader); 5] = [
        ("transformer config", "transformer/config.json", |p| {
            dit::WanConfig::from_file(p).is_ok()
        }),
        ("vae config", "vae/config.json", |p| {
            vae::VaeConfig::from_file(p).is_ok()
        }),
        ("text encoder config", "text_encoder/config.json", |p| {
            umt5::Umt5Config::from_file(p).is_ok()
        }),
        ("scheduler config", "scheduler/scheduler_config.json", |p| {
            pipelines::schedulers::SchedulerConfig::from_file(p).is_ok()
        }),
        ("generation config", "generation_config.json", |p| {
            pipelines::t2v::SettingOverrides::from_file(p).is_ok()
        }),
    ];
    for (name, file, load) in cases {
        let base = std::fs::read(tiny(file)).unwrap();
        fuzz(name, &base, &path, load);
    }
}

#[test]
fn tokenizer_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let base = std::fs::read(tiny("tokenizer/tokenizer.json")).unwrap();
    fuzz("tokenizer", &base, &path, |p| {
        umt5::PromptTokenizer::open(p.parent().unwrap()).is_ok_and(|tokenizer| {
            tokenizer
                .tokenize(&["a red kite over a windy beach"], 64, &Device::Cpu)
                .is_ok()
        })
    });
}

fn small_frames() -> Vec<Frame> {
    (0..3u8)
        .map(|t| {
            let rgb = (0..16 * 12 * 3)
                .map(|i| (i as u8).wrapping_mul(7).wrapping_add(t * 40))
                .collect();
            Frame::new(16, 12, rgb).unwrap()
        })
        .collect()
}

#[test]
fn y4m_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("video.y4m");
    let fps = vdit::video::FrameRate::new(16, 1).unwrap();
    let mut writer = VideoWriter::open(&path, 16, 12, fps).unwrap();
    for frame in small_frames() {
        writer.push(&frame).unwrap();
    }
    writer.finish().unwrap();
    let base = std::fs::read(&path).unwrap();
    fuzz("y4m", &base, &path, |p| {
        Y4mReader::open(p).is_ok_and(|reader| reader.take(8).all(|frame| frame.is_ok()))
    });
}

#[test]
fn png_frame_folders() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("frames");
    let fps = vdit::video::FrameRate::new(16, 1).unwrap();
    let mut writer = VideoWriter::open(&folder, 16, 12, fps).unwrap();
    for frame in small_frames() {
        writer.push(&frame).unwrap();
    }
    writer.finish().unwrap();
    let path = folder.join("frame_00001.png");
    let base = std::fs::read(&path).unwrap();
    fuzz("png folder", &base, &path, |p| {
        PngFolderReader::open(p.parent().unwrap())
            .is_ok_and(|reader| reader.into_iter().all(|frame| frame.is_ok()))
    });
}

#[test]
fn paro_calibrations() {
    use safetensors::tensor::{serialize, Dtype, TensorView};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("paro.safetensors");
    // grid 1x4x4 in blocks of 8: 2 blocks; 1 layer of 2 heads, 1 step group.
    let orders = [0u8, 3];
    let masks = [1u8, 0, 1, 1, 1, 1, 0, 1];
    let views = [
        (
            "orders",
            TensorView::new(Dtype::U8, vec![1, 2], &orders).unwrap(),
        ),
        (
            "masks",
            TensorView::new(Dtype::U8, vec![1, 1, 2, 2, 2], &masks).unwrap(),
        ),
    ];
    let meta = HashMap::from([
        ("format".to_string(), "vdit-paro-1".to_string()),
        ("grid".to_string(), "1,4,4".to_string()),
        ("block".to_string(), "8".to_string()),
        ("density".to_string(), "0.75".to_string()),
    ]);
    let base = serialize(views, Some(meta)).unwrap();
    fuzz("paro calibration", &base, &path, |p| {
        sparse::paro::ParoCalibration::load(p).is_ok()
    });
}

#[test]
fn y4m_headers_with_absurd_sizes_are_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.y4m");
    std::fs::write(
        &path,
        b"YUV4MPEG2 W100000 H100000 F16:1 C444\nFRAME\n\x10\x10\x10",
    )
    .unwrap();
    let err = Y4mReader::open(&path).err().expect("refused").to_string();
    assert!(err.contains("cannot hold one frame"), "{err}");
}

#[test]
fn batch_job_lines() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    let bases = [
        r#"{"prompt": "a red kite", "seed": 7, "id": "kite-1", "size": "64x48", "frames": 9, "steps": 2}"#,
        r#"{"prompt": "a cat", "seed": 3, "attention": "vsa", "sparsity": 0.5, "dense_steps": 1, "dense_layers": "0,1"}"#,
        r#"{"prompt": "a dog", "seed": 1, "guidance": 1.0, "attention": "vmoba", "topk": 2, "fps": 24, "scheduler": "euler"}"#,
    ];
    let seed = seed();
    let mut rng = Rng(seed);
    let lines: Vec<String> = (0..CASES)
        .map(|i| {
            let mutated = mutate(bases[i % bases.len()].as_bytes(), &mut rng);
            String::from_utf8_lossy(&mutated).replace('\n', " ")
        })
        .collect();
    std::fs::write(&jobs, bases.join("\n") + "\n" + &lines.join("\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vdit"))
        .args(["batch", jobs.to_str().unwrap(), "--out-dir"])
        .arg(dir.path().join("out"))
        .args([
            "--model",
            tiny("").to_str().unwrap(),
            "--dry-run",
            "--quiet",
        ])
        .env_remove("VDIT_DEFAULT_MODEL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && matches!(out.status.code(), Some(0 | 1)),
        "VDIT_FUZZ_SEED={seed}: {stderr}"
    );
    assert!(stdout.starts_with("batch (dry run): "), "{stdout}");
    // The unmutated lines pass.
    let flagged = |n: usize| {
        stderr
            .lines()
            .any(|l| l.starts_with(&format!("line {n}: ")))
    };
    assert!(!(1..=3).any(flagged), "{stderr}");
    println!("{stdout}");
}

#[test]
fn non_finite_latents_and_embeddings_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let latents = dir.path().join("latents.safetensors");
    // The tiny model at 64x48 x 9 frames: [1, 16, 3, 6, 8].
    let mut values = vec![0.5f32; 16 * 3 * 6 * 8];
    values[100] = f32::NAN;
    let tensor = Tensor::from_vec(values, (1, 16, 3, 6, 8), &Device::Cpu).unwrap();
    candle_core::safetensors::save(&HashMap::from([("latents".to_string(), tensor)]), &latents)
        .unwrap();
    let video = dir.path().join("v.y4m");
    let mut args = small(&video);
    let seed = args.iter().position(|a| a == "--seed").unwrap();
    args.splice(
        seed..seed + 2,
        [
            "--latents".to_string(),
            latents.to_str().unwrap().to_string(),
        ],
    );
    let out = t2v_common::vdit(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds NaN or infinite values"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!video.exists());
}

#[test]
fn latents_that_turn_non_finite_stop_the_run_at_that_step() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(model.join("transformer")).unwrap();
    for part in ["scheduler", "text_encoder", "tokenizer", "vae"] {
        std::os::unix::fs::symlink(tiny(part), model.join(part)).unwrap();
    }
    for file in ["model_index.json", "generation_config.json"] {
        std::fs::copy(tiny(file), model.join(file)).unwrap();
    }
    std::fs::copy(
        tiny("transformer/config.json"),
        model.join("transformer/config.json"),
    )
    .unwrap();
    // The transformer's weights with one infinite output bias.
    let file = "transformer/diffusion_pytorch_model.safetensors";
    let mut tensors = candle_core::safetensors::load(tiny(file), &Device::Cpu).unwrap();
    let key = tensors
        .keys()
        .find(|k| k.starts_with("proj_out") && k.ends_with("bias"))
        .cloned()
        .expect("an output bias");
    let bias = &tensors[&key];
    let broken = (bias.ones_like().unwrap() * f64::INFINITY).unwrap();
    tensors.insert(key, broken.to_dtype(bias.dtype()).unwrap());
    candle_core::safetensors::save(&tensors, model.join(file)).unwrap();
    let video = dir.path().join("v.y4m");
    let mut args = small(&video);
    for (flag, value) in [("--model", model.to_str().unwrap()), ("--steps", "3")] {
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = value.to_string();
    }
    let out = t2v_common::vdit(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("became NaN or infinite at step 1 of 3"),
        "{stderr}"
    );
    assert!(!video.exists());
}
