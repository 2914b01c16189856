//! Named tensors as safetensors files no larger than a byte limit.
//!
//! Tensors are packed in name order into as few files as the limit allows. The limit counts the
//! whole file (header included): the header size is bounded from above before packing, and
//! every file is checked against the limit once serialised. A tensor too large for one file is
//! either refused or, where the caller allows it (checkpoints), written as flat chunks named
//! `NAME.chunk-00001-of-00003` that [`join_chunks`] puts back together.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use safetensors::tensor as st;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The default largest file: 15 MiB, under the 16 MiB that comes back from the GPU machine.
pub const DEFAULT_SHARD_BYTES: u64 = 15 * 1024 * 1024;

/// The smallest file limit accepted (room for a header and some data).
pub const MIN_SHARD_BYTES: u64 = 4096;

/// Fixed bytes of a file besides its tensor entries and metadata: the 8-byte length, the JSON
/// braces and `"__metadata__":{}` with separators, the up-to-7 bytes of alignment padding, and
/// slack.
const FILE_OVERHEAD: u64 = 8 + 7 + 64;

/// Element type of written weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WeightDtype {
    /// 32-bit floats (bit-exact for f32 parameters).
    F32,
    /// bfloat16, rounded to nearest even.
    Bf16,
}

impl WeightDtype {
    /// Bytes per element.
    fn size(self) -> u64 {
        match self {
            Self::F32 => 4,
            Self::Bf16 => 2,
        }
    }

    /// The safetensors element type.
    fn st(self) -> st::Dtype {
        match self {
            Self::F32 => st::Dtype::F32,
            Self::Bf16 => st::Dtype::BF16,
        }
    }
}

/// How a tensor too large for one file was cut: its shape and number of flat chunks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Split {
    /// The shape of the whole tensor.
    pub shape: Vec<usize>,
    /// How many chunks (`NAME.chunk-00001-of-0000N` ...) hold it, in order.
    pub chunks: usize,
}

/// One tensor, or one flat chunk of one, waiting to be written.
#[derive(Clone, Debug)]
struct Piece {
    name: String,
    tensor: Tensor,
    /// Start and length in the flattened tensor, for a chunk.
    range: Option<(usize, usize)>,
    /// Elements.
    count: u64,
    /// Rank of the stored shape.
    rank: u64,
}

/// Files to write: the pieces of each, and the tensors that were cut into chunks.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    files: Vec<Vec<Piece>>,
    /// Tensors written as chunks, by name.
    pub split: BTreeMap<String, Split>,
}

impl Plan {
    /// How many files the plan writes.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// The names stored in file `index`.
    pub fn names(&self, index: usize) -> Vec<&str> {
        self.files
            .get(index)
            .map(|f| f.iter().map(|p| p.name.as_str()).collect())
            .unwrap_or_default()
    }
}

/// An upper bound of the JSON bytes a string takes (escapes are at most 6 bytes a byte).
fn json_bound(s: &str) -> u64 {
    (s.len() as u64).saturating_mul(6).saturating_add(2)
}

/// An upper bound of the header bytes of one tensor entry:
/// `"NAME":{"dtype":"BF16","shape":[..],"data_offsets":[a,b]},`.
fn entry_bound(name: &str, rank: u64) -> u64 {
    json_bound(name)
        .saturating_add(rank.saturating_mul(21))
        .saturating_add(128)
}

/// An upper bound of the header bytes of the `__metadata__` entries.
fn metadata_bound(metadata: &HashMap<String, String>) -> u64 {
    metadata.iter().fold(0u64, |sum, (k, v)| {
        sum.saturating_add(json_bound(k))
            .saturating_add(json_bound(v))
            .saturating_add(2)
    })
}

/// The name of chunk `index` (from 0) of `count` of tensor `name`.
pub(crate) fn chunk_name(name: &str, index: usize, count: usize) -> String {
    format!("{name}.chunk-{:05}-of-{count:05}", index + 1)
}

/// Checks a file size limit.
pub(crate) fn check_limit(limit: u64) -> Result<()> {
    if limit < MIN_SHARD_BYTES {
        return Err(Error::Usage(format!(
            "file size limit of {limit} bytes is too small: give at least {MIN_SHARD_BYTES} \
             (the default is {DEFAULT_SHARD_BYTES})"
        )));
    }
    Ok(())
}

/// Packs `tensors` (in the given order) into files of at most `limit` bytes carrying
/// `metadata`, written as `dtype`. A tensor too large for one file is cut into chunks when
/// `allow_split`, refused otherwise.
pub(crate) fn plan(
    tensors: &[(&str, &Tensor)],
    dtype: WeightDtype,
    limit: u64,
    metadata: &HashMap<String, String>,
    allow_split: bool,
) -> Result<Plan> {
    check_limit(limit)?;
    let fixed = FILE_OVERHEAD.saturating_add(metadata_bound(metadata));
    let too_small = || {
        Error::Usage(format!(
            "file size limit of {limit} bytes leaves no room for data after the header: raise it \
             (the default is {DEFAULT_SHARD_BYTES})"
        ))
    };
    let room = limit.checked_sub(fixed).ok_or_else(too_small)?;
    let mut pieces = Vec::new();
    let mut split = BTreeMap::new();
    for &(name, tensor) in tensors {
        let count = tensor.elem_count() as u64;
        let rank = tensor.rank() as u64;
        let bytes = count.checked_mul(dtype.size()).ok_or_else(|| {
            Error::Usage(format!(
                "tensor {name} is too large to write: check its shape"
            ))
        })?;
        if entry_bound(name, rank).saturating_add(bytes) <= room {
            pieces.push(Piece {
                name: name.to_string(),
                tensor: tensor.clone(),
                range: None,
                count,
                rank,
            });
            continue;
        }
        if !allow_split {
            return Err(Error::Usage(format!(
                "tensor {name} takes {bytes} bytes, more than fits in one file of {limit} bytes: \
                 raise the file size limit (or write bf16)"
            )));
        }
        // The longest chunk name, for the header bound of every chunk.
        let longest = format!("{name}.chunk-{:05}-of-{:05}", usize::MAX, usize::MAX);
        let per_chunk = room
            .checked_sub(entry_bound(&longest, 1))
            .ok_or_else(too_small)?
            / dtype.size();
        if per_chunk == 0 {
            return Err(too_small());
        }
        let chunks = usize::try_from(count.div_ceil(per_chunk)).map_err(|_| too_small())?;
        let per = usize::try_from(per_chunk).map_err(|_| too_small())?;
        let total = tensor.elem_count();
        for index in 0..chunks {
            let start = index.checked_mul(per).ok_or_else(too_small)?;
            let len = per.min(total.saturating_sub(start));
            pieces.push(Piece {
                name: chunk_name(name, index, chunks),
                tensor: tensor.clone(),
                range: Some((start, len)),
                count: len as u64,
                rank: 1,
            });
        }
        split.insert(
            name.to_string(),
            Split {
                shape: tensor.dims().to_vec(),
                chunks,
            },
        );
    }
    let mut files: Vec<Vec<Piece>> = vec![Vec::new()];
    let mut used = 0u64;
    for piece in pieces {
        let need = entry_bound(&piece.name, piece.rank)
            .saturating_add(piece.count.saturating_mul(dtype.size()));
        let fits = used.saturating_add(need) <= room;
        match files.last_mut() {
            Some(current) if fits || current.is_empty() => {
                current.push(piece);
                used = used.saturating_add(need);
            }
            _ => {
                files.push(vec![piece]);
                used = need;
            }
        }
    }
    Ok(Plan { files, split })
}

/// A tensor's bytes in the file's element type, ready to serialise.
struct Raw {
    dtype: st::Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl st::View for &Raw {
    fn dtype(&self) -> st::Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }

    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The little-endian bytes of `piece` as `dtype` (bf16 is rounded to nearest even by candle;
/// its bits are the top half of the exactly widened f32, so no `half` dependency is needed).
fn raw(piece: &Piece, dtype: WeightDtype) -> Result<Raw> {
    let mut flat = piece.tensor.detach();
    let shape = match piece.range {
        Some((start, len)) => {
            flat = flat.flatten_all()?.narrow(0, start, len)?;
            vec![len]
        }
        None => {
            let shape = flat.dims().to_vec();
            flat = flat.flatten_all()?;
            shape
        }
    };
    let bytes = match dtype {
        WeightDtype::F32 => flat
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        WeightDtype::Bf16 => flat
            .to_dtype(DType::BF16)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
            .collect(),
    };
    Ok(Raw {
        dtype: dtype.st(),
        shape,
        bytes,
    })
}

/// Serialises file `index` of `plan`: the bytes of a complete safetensors file.
pub(crate) fn serialize(
    plan: &Plan,
    index: usize,
    dtype: WeightDtype,
    metadata: &HashMap<String, String>,
) -> Result<Vec<u8>> {
    let pieces = plan.files.get(index).ok_or_else(|| {
        Error::Usage(format!(
            "file {index} is not in a plan of {} files",
            plan.len()
        ))
    })?;
    let raws = pieces
        .iter()
        .map(|p| Ok((p.name.clone(), raw(p, dtype)?)))
        .collect::<Result<Vec<_>>>()?;
    let views = raws.iter().map(|(name, raw)| (name.as_str(), raw));
    safetensors::serialize(views, Some(metadata.clone())).map_err(|e| {
        Error::Usage(format!(
            "cannot serialise safetensors: {e}: report this as a vdit bug"
        ))
    })
}

/// Writes `bytes` to a new file at `path` and makes it durable.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = std::fs::File::create(path).map_err(|e| Error::io("write", path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("write", path, e))
}

/// Serialises every file of `plan` and writes file `i` at `paths[i]`, checking each against
/// `limit`.
pub(crate) fn write_plan(
    plan: &Plan,
    paths: &[std::path::PathBuf],
    dtype: WeightDtype,
    metadata: &HashMap<String, String>,
    limit: u64,
) -> Result<()> {
    if paths.len() != plan.len() {
        return Err(Error::Usage(format!(
            "{} paths for {} files: report this as a vdit bug",
            paths.len(),
            plan.len()
        )));
    }
    for (index, path) in paths.iter().enumerate() {
        let bytes = serialize(plan, index, dtype, metadata)?;
        if bytes.len() as u64 > limit {
            return Err(Error::Usage(format!(
                "{} would take {} bytes, over the limit of {limit}: report this as a vdit bug",
                path.display(),
                bytes.len()
            )));
        }
        write_synced(path, &bytes)?;
    }
    Ok(())
}

/// The tensors of the safetensors file at `path`, on `device`.
pub(crate) fn read_file(path: &Path, device: &Device) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    let file = st::SafeTensors::deserialize(&bytes).map_err(|e| {
        Error::Checkpoint(format!(
            "{} is not a readable safetensors file ({e}): copy it again or use an earlier \
             checkpoint",
            path.display()
        ))
    })?;
    let mut tensors = Vec::new();
    for (name, view) in file.iter() {
        tensors.push((name.to_string(), view.load(device)?));
    }
    Ok(tensors)
}

/// Puts tensors cut by [`plan`] back together: removes the chunks named in `split` from
/// `tensors` and inserts the whole tensors.
pub(crate) fn join_chunks(
    tensors: &mut BTreeMap<String, Tensor>,
    split: &BTreeMap<String, Split>,
    origin: &Path,
) -> Result<()> {
    for (name, cut) in split {
        let mut parts = Vec::with_capacity(cut.chunks);
        for index in 0..cut.chunks {
            let chunk = chunk_name(name, index, cut.chunks);
            let part = tensors.remove(&chunk).ok_or_else(|| {
                Error::Checkpoint(format!(
                    "{} lacks {chunk} (one of the {} chunks of {name}): copy the whole \
                     checkpoint folder again or resume from an earlier one",
                    origin.display(),
                    cut.chunks
                ))
            })?;
            parts.push(part);
        }
        let whole = Tensor::cat(&parts, 0)?;
        let expected = cut.shape.iter().try_fold(1usize, |n, d| n.checked_mul(*d));
        if expected != Some(whole.elem_count()) {
            return Err(Error::Checkpoint(format!(
                "the chunks of {name} in {} hold {} values, not the {:?} recorded: copy the \
                 whole checkpoint folder again or resume from an earlier one",
                origin.display(),
                whole.elem_count(),
                cut.shape
            )));
        }
        tensors.insert(name.clone(), whole.reshape(cut.shape.as_slice())?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_bytes_round_to_nearest_even() {
        // 1 + 2^-8 is halfway between bf16 1.0 and the next value: ties go to even (1.0).
        let t = Tensor::new(&[1.0f32, 1.0 + 1.0 / 256.0, -2.5, 3.0e38], &Device::Cpu).unwrap();
        let piece = Piece {
            name: "x".into(),
            tensor: t,
            range: None,
            count: 4,
            rank: 1,
        };
        let raw = raw(&piece, WeightDtype::Bf16).unwrap();
        let bits: Vec<u16> = raw
            .bytes
            .chunks(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(&bits[..3], &[0x3f80, 0x3f80, 0xc020]);
        assert_eq!(bits[3], 0x7f62, "3e38 rounds to 0x7f62 in bf16");
    }

    #[test]
    fn header_bound_holds_for_awkward_names() {
        let t = Tensor::zeros((3, 5, 7), DType::F32, &Device::Cpu).unwrap();
        let names = ["a\"b\\c\u{1}", "ü.weight", "plain"];
        let tensors: Vec<(&str, &Tensor)> = names.iter().map(|n| (*n, &t)).collect();
        let meta = HashMap::from([("k\n".to_string(), "v\"".to_string())]);
        let plan = plan(&tensors, WeightDtype::F32, 1 << 20, &meta, false).unwrap();
        let bytes = serialize(&plan, 0, WeightDtype::F32, &meta).unwrap();
        let bound = FILE_OVERHEAD
            + metadata_bound(&meta)
            + names
                .iter()
                .map(|n| entry_bound(n, 3) + 3 * 5 * 7 * 4)
                .sum::<u64>();
        assert!(bytes.len() as u64 <= bound, "{} > {bound}", bytes.len());
    }
}
