//! Training checkpoints: one safetensors file holding everything needed to resume exactly.
//!
//! # Format (version 1)
//!
//! A standard safetensors file (readable by any safetensors tool) with
//!
//! - one `F32` tensor `params/<name>` per tensor of the model's layout (the fp32 latent
//!   weights, in the layout's shape);
//! - one 1-D `F32` tensor `optim/<buffer>` per optimizer buffer (e.g. AdamW's `m` and `v`);
//! - string metadata: `format` (`bitnet-checkpoint`), `format_version`, `step`, `tokens`,
//!   `seed`, `data_position` (JSON `{"epoch":…,"cursor":…}` of the batch source), `layout`
//!   (JSON list of the tensor specs), `layout_fingerprint`, `kernel` and `optimizer` (plugin
//!   names), `optimizer_step`, `optimizer_buffers` (JSON list of buffer names, in order),
//!   `run_config` (the run's TOML), and `checksum`.
//!
//! `checksum` is the SHA-256, in hex, of every other metadata entry (sorted by key, each as
//! `key NUL value NUL`) followed by every tensor (sorted by name, each as `name NUL dtype NUL`,
//! the dimensions as little-endian u64, then the raw bytes). Safetensors checks the header's
//! structure and offsets; the checksum catches everything else (a flipped bit in a weight, a
//! changed step). The trainer's only randomness is the data order, a pure function of
//! `(seed, data_position)`, so those two are its RNG state.
//!
//! Files are written to a temporary name in the same directory, synced, then renamed over the
//! target, so a crash leaves either the old checkpoint or the new one, never half of one.

use crate::data::SourcePosition;
use bitnet_framework::optim::OptimizerState;
use bitnet_framework::tensor::{ParamLayout, TensorSpec};
use safetensors::tensor::{Dtype, SafeTensors, View};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Value of the `format` metadata entry.
pub const FORMAT: &str = "bitnet-checkpoint";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

const PARAM_PREFIX: &str = "params/";
const OPTIM_PREFIX: &str = "optim/";

/// A checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing the file failed.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is damaged: truncated, malformed, or its checksum does not match.
    #[error("checkpoint {path} is corrupt: {reason}")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file is not a bitnet checkpoint of a version this build reads.
    #[error("{path} is not a usable bitnet checkpoint: {reason}")]
    Format {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The checkpoint is intact but belongs to another model or run.
    #[error("checkpoint {path} does not fit this run: {reason}")]
    Mismatch {
        /// File.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// The values handed to [`write`] are inconsistent (a bug in the caller).
    #[error("cannot write checkpoint {path}: {reason}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Everything in a checkpoint except the tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointMeta {
    /// Optimizer steps completed.
    pub step: u64,
    /// Training tokens consumed.
    pub tokens: u64,
    /// Base seed of the run.
    pub seed: u64,
    /// Where the training batch source stands.
    pub data_position: SourcePosition,
    /// Layout of the parameter arena.
    pub layout: ParamLayout,
    /// Model kernel plugin name.
    pub kernel: String,
    /// Optimizer plugin name.
    pub optimizer: String,
    /// The run configuration (TOML) the checkpoint was trained with.
    pub run_config: String,
}

/// Writes a checkpoint atomically (temporary file, sync, rename).
pub fn write(
    path: &Path,
    meta: &CheckpointMeta,
    params: &[f32],
    optimizer: &OptimizerState,
) -> Result<(), CheckpointError> {
    let invalid = |reason: String| CheckpointError::Invalid { path: path.to_path_buf(), reason };
    if params.len() != meta.layout.total_params() {
        return Err(invalid(format!(
            "{} parameters for a layout of {}",
            params.len(),
            meta.layout.total_params()
        )));
    }
    let mut tensors: Vec<(String, F32View<'_>)> = Vec::new();
    for (spec, range) in meta.layout.iter() {
        tensors.push((
            format!("{PARAM_PREFIX}{}", spec.name),
            F32View { shape: spec.shape.clone(), data: &params[range] },
        ));
    }
    let mut buffer_names = Vec::new();
    for (name, buf) in &optimizer.buffers {
        if buf.is_empty() {
            return Err(invalid(format!("optimizer buffer `{name}` is empty")));
        }
        buffer_names.push(name.clone());
        tensors
            .push((format!("{OPTIM_PREFIX}{name}"), F32View { shape: vec![buf.len()], data: buf }));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    if tensors.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(invalid("two tensors share a name".into()));
    }

    let specs: Vec<&TensorSpec> = meta.layout.tensors().iter().collect();
    let mut metadata: HashMap<String, String> = HashMap::from([
        ("format".into(), FORMAT.into()),
        ("format_version".into(), FORMAT_VERSION.to_string()),
        ("step".into(), meta.step.to_string()),
        ("tokens".into(), meta.tokens.to_string()),
        ("seed".into(), meta.seed.to_string()),
        ("data_position".into(), to_json(path, &meta.data_position)?),
        ("layout".into(), to_json(path, &specs)?),
        ("layout_fingerprint".into(), meta.layout.fingerprint()),
        ("kernel".into(), meta.kernel.clone()),
        ("optimizer".into(), meta.optimizer.clone()),
        ("optimizer_step".into(), optimizer.step.to_string()),
        ("optimizer_buffers".into(), to_json(path, &buffer_names)?),
        ("run_config".into(), meta.run_config.clone()),
    ]);
    let bytes: Vec<Cow<'_, [u8]>> = tensors.iter().map(|(_, v)| v.data()).collect();
    let checksum = checksum(
        &metadata,
        tensors.iter().zip(&bytes).map(|((n, v), d)| (n.as_str(), Dtype::F32, &v.shape[..], &**d)),
    );
    drop(bytes);
    metadata.insert("checksum".into(), checksum);

    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        safetensors::serialize_to_file(tensors, &Some(metadata), &tmp).map_err(|e| {
            CheckpointError::Io { path: tmp.clone(), source: std::io::Error::other(e.to_string()) }
        })?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        // Make the rename itself durable; not every platform can sync a directory.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn to_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<String, CheckpointError> {
    serde_json::to_string(value)
        .map_err(|e| CheckpointError::Invalid { path: path.to_path_buf(), reason: e.to_string() })
}

/// A verified checkpoint file, memory-mapped. Opening checks the format and the checksum;
/// [`CheckpointFile::params`] and [`CheckpointFile::optimizer_state`] decode on demand, so a
/// reader that needs only the weights never copies the optimizer state.
pub struct CheckpointFile {
    path: PathBuf,
    bytes: CheckpointBytes,
    meta: CheckpointMeta,
    optimizer_step: u64,
    optimizer_buffers: Vec<String>,
}

impl std::fmt::Debug for CheckpointFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointFile")
            .field("path", &self.path)
            .field("meta", &self.meta)
            .finish()
    }
}

/// Where a checkpoint's bytes live: mapped from its file, or handed over in memory.
enum CheckpointBytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for CheckpointBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            CheckpointBytes::Mapped(map) => map,
            CheckpointBytes::Owned(bytes) => bytes,
        }
    }
}

impl CheckpointFile {
    /// Opens and verifies `path`.
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this process. Checkpoints are written to a
        // temporary file and renamed into place, never modified in place, so the mapped file does
        // not change under us unless something outside bitnet truncates it deliberately.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::verified(path.to_path_buf(), CheckpointBytes::Mapped(map))
    }

    /// Verifies the bytes of a checkpoint held in memory, exactly as [`CheckpointFile::open`]
    /// verifies a file (the fuzz targets drive it); `path` only names it in errors.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self, CheckpointError> {
        Self::verified(path.into(), CheckpointBytes::Owned(bytes))
    }

    fn verified(path: PathBuf, bytes: CheckpointBytes) -> Result<Self, CheckpointError> {
        let (meta, optimizer_step, optimizer_buffers) = verify(&path, &bytes)?;
        Ok(Self { path, bytes, meta, optimizer_step, optimizer_buffers })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Step, position, layout, plugin names and run config.
    pub fn meta(&self) -> &CheckpointMeta {
        &self.meta
    }

    /// Refuses the checkpoint unless it was written for `layout` (names, shapes and roles).
    pub fn check_layout(&self, layout: &ParamLayout) -> Result<(), CheckpointError> {
        if self.meta.layout.fingerprint() == layout.fingerprint() {
            return Ok(());
        }
        Err(CheckpointError::Mismatch {
            path: self.path.clone(),
            reason: describe_layout_difference(&self.meta.layout, layout),
        })
    }

    /// The parameter arena, after checking it was written for `layout`.
    pub fn params(&self, layout: &ParamLayout) -> Result<Vec<f32>, CheckpointError> {
        self.check_layout(layout)?;
        let st = self.tensors()?;
        let mut out = vec![0f32; layout.total_params()];
        for (spec, range) in layout.iter() {
            let name = format!("{PARAM_PREFIX}{}", spec.name);
            let view = st.tensor(&name).map_err(|e| self.corrupt(format!("`{name}`: {e}")))?;
            decode_f32(view.data(), &mut out[range]);
        }
        Ok(out)
    }

    /// The optimizer state (buffers in the order the optimizer saved them).
    pub fn optimizer_state(&self) -> Result<OptimizerState, CheckpointError> {
        let st = self.tensors()?;
        let mut buffers = Vec::with_capacity(self.optimizer_buffers.len());
        for name in &self.optimizer_buffers {
            let key = format!("{OPTIM_PREFIX}{name}");
            let view = st.tensor(&key).map_err(|e| self.corrupt(format!("`{key}`: {e}")))?;
            let mut buf = vec![0f32; view.data().len() / 4];
            decode_f32(view.data(), &mut buf);
            buffers.push((name.clone(), buf));
        }
        Ok(OptimizerState { step: self.optimizer_step, buffers })
    }

    fn tensors(&self) -> Result<SafeTensors<'_>, CheckpointError> {
        SafeTensors::deserialize(&self.bytes).map_err(|e| self.corrupt(e.to_string()))
    }

    fn corrupt(&self, reason: String) -> CheckpointError {
        CheckpointError::Corrupt { path: self.path.clone(), reason }
    }
}

/// Checks structure, format, checksum and metadata of the bytes of a checkpoint file.
fn verify(
    path: &Path,
    bytes: &[u8],
) -> Result<(CheckpointMeta, u64, Vec<String>), CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt { path: path.to_path_buf(), reason };
    let format_err = |reason: String| CheckpointError::Format { path: path.to_path_buf(), reason };
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        corrupt(format!("not a readable safetensors file ({e}); truncated or damaged?"))
    })?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut metadata = header.metadata().clone().unwrap_or_default();
    match metadata.get("format") {
        Some(f) if f == FORMAT => {}
        Some(f) => return Err(format_err(format!("format is `{f}`, expected `{FORMAT}`"))),
        None => return Err(format_err("no `format` entry: not written by bitnet".into())),
    }
    let stored = metadata.remove("checksum").ok_or_else(|| corrupt("no checksum entry".into()))?;
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let actual = checksum(
        &metadata,
        tensors.iter().map(|(n, v)| (n.as_str(), v.dtype(), v.shape(), v.data())),
    );
    if actual != stored {
        return Err(corrupt(format!("checksum mismatch (stored {stored}, computed {actual})")));
    }
    // Intact from here on: anything odd is a format problem, not damage.
    let get = |key: &str| {
        metadata.get(key).ok_or_else(|| format_err(format!("missing metadata entry `{key}`")))
    };
    let num = |key: &str| -> Result<u64, CheckpointError> {
        get(key)?.parse().map_err(|_| format_err(format!("metadata `{key}` is not a number")))
    };
    let version = num("format_version")?;
    if version != u64::from(FORMAT_VERSION) {
        return Err(format_err(format!(
            "format version {version}; this build reads version {FORMAT_VERSION}"
        )));
    }
    let json = |key: &str| -> Result<serde_json::Value, CheckpointError> {
        serde_json::from_str(get(key)?)
            .map_err(|e| format_err(format!("metadata `{key}` is not valid JSON: {e}")))
    };
    let data_position: SourcePosition = serde_json::from_value(json("data_position")?)
        .map_err(|e| format_err(format!("metadata `data_position`: {e}")))?;
    let specs: Vec<TensorSpec> = serde_json::from_value(json("layout")?)
        .map_err(|e| format_err(format!("metadata `layout`: {e}")))?;
    let layout =
        ParamLayout::new(specs).map_err(|e| format_err(format!("metadata `layout`: {e}")))?;
    let fingerprint = get("layout_fingerprint")?;
    if &layout.fingerprint() != fingerprint {
        return Err(format_err("the layout does not match its fingerprint".into()));
    }
    for spec in layout.tensors() {
        let name = format!("{PARAM_PREFIX}{}", spec.name);
        match st.tensor(&name) {
            Ok(v) if v.dtype() == Dtype::F32 && v.shape() == spec.shape.as_slice() => {}
            Ok(v) => {
                return Err(format_err(format!(
                    "`{name}` is {:?} {:?}, the layout says F32 {:?}",
                    v.dtype(),
                    v.shape(),
                    spec.shape
                )));
            }
            Err(_) => return Err(format_err(format!("tensor `{name}` is missing"))),
        }
    }
    let optimizer_buffers: Vec<String> = serde_json::from_value(json("optimizer_buffers")?)
        .map_err(|e| format_err(format!("metadata `optimizer_buffers`: {e}")))?;
    for name in &optimizer_buffers {
        let key = format!("{OPTIM_PREFIX}{name}");
        match st.tensor(&key) {
            Ok(v) if v.dtype() == Dtype::F32 && v.shape().len() == 1 => {}
            _ => {
                return Err(format_err(format!(
                    "optimizer tensor `{key}` is missing or not 1-D F32"
                )));
            }
        }
    }
    let meta = CheckpointMeta {
        step: num("step")?,
        tokens: num("tokens")?,
        seed: num("seed")?,
        data_position,
        layout,
        kernel: get("kernel")?.clone(),
        optimizer: get("optimizer")?.clone(),
        run_config: get("run_config")?.clone(),
    };
    Ok((meta, num("optimizer_step")?, optimizer_buffers))
}

/// Recomputes the `checksum` entry of a checkpoint's bytes and returns the file re-serialised
/// with it, for tools and tests that edit a checkpoint on purpose (to check that the checks
/// behind the checksum hold without its help). Fails when the bytes are not safetensors.
pub fn reseal(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let mut metadata = header.metadata().clone().unwrap_or_default();
    metadata.remove("checksum");
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let sum = checksum(
        &metadata,
        tensors.iter().map(|(n, v)| (n.as_str(), v.dtype(), v.shape(), v.data())),
    );
    metadata.insert("checksum".into(), sum);
    safetensors::serialize(tensors, &Some(metadata)).map_err(|e| e.to_string())
}

/// What differs between the checkpoint's layout and the model's, in words.
fn describe_layout_difference(saved: &ParamLayout, model: &ParamLayout) -> String {
    for (i, want) in model.tensors().iter().enumerate() {
        match saved.tensors().iter().position(|t| t.name == want.name) {
            None => {
                return format!("the model has tensor `{}`, the checkpoint does not", want.name);
            }
            Some(j) => {
                let got = &saved.tensors()[j];
                if got.shape != want.shape {
                    return format!(
                        "tensor `{}` is {:?} in the checkpoint but {:?} in the model",
                        want.name, got.shape, want.shape
                    );
                }
                if got.role != want.role {
                    return format!(
                        "tensor `{}` is a {:?} in the checkpoint but a {:?} in the model",
                        want.name, got.role, want.role
                    );
                }
                if i != j {
                    return format!("tensor `{}` is at a different position", want.name);
                }
            }
        }
    }
    if let Some(extra) = saved.tensors().iter().find(|t| model.index_of(&t.name).is_none()) {
        return format!("the checkpoint has tensor `{}`, the model does not", extra.name);
    }
    "the layout fingerprints differ".into()
}

fn checksum<'a>(
    metadata: &HashMap<String, String>,
    tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>,
) -> String {
    let mut h = Sha256::new();
    let mut keys: Vec<&String> = metadata.keys().collect();
    keys.sort();
    for k in keys {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(metadata[k].as_bytes());
        h.update([0]);
    }
    for (name, dtype, shape, data) in tensors {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(format!("{dtype:?}").as_bytes());
        h.update([0]);
        for d in shape {
            h.update((*d as u64).to_le_bytes());
        }
        h.update(data);
    }
    hex::encode(h.finalize())
}

fn decode_f32(bytes: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// An f32 slice as a safetensors tensor (little-endian bytes).
struct F32View<'a> {
    shape: Vec<usize>,
    data: &'a [f32],
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        #[cfg(target_endian = "little")]
        {
            // SAFETY: f32 has no padding and every byte of it is initialised; u8 has alignment 1;
            // the length covers exactly the slice's bytes; on little-endian targets the in-memory
            // bytes are the little-endian encoding safetensors wants.
            let bytes = unsafe {
                std::slice::from_raw_parts(self.data.as_ptr().cast::<u8>(), size_of_val(self.data))
            };
            Cow::Borrowed(bytes)
        }
        #[cfg(not(target_endian = "little"))]
        {
            Cow::Owned(self.data.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
    }
    fn data_len(&self) -> usize {
        size_of_val(self.data)
    }
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory, sync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_framework::tensor::TensorRole;
    use proptest::prelude::*;

    fn layout() -> ParamLayout {
        ParamLayout::new(vec![
            TensorSpec { name: "emb".into(), shape: vec![3, 2], role: TensorRole::Embedding },
            TensorSpec { name: "norm".into(), shape: vec![2], role: TensorRole::Norm },
            TensorSpec { name: "head".into(), shape: vec![3, 2], role: TensorRole::Head },
        ])
        .expect("layout")
    }

    fn meta() -> CheckpointMeta {
        CheckpointMeta {
            step: 42,
            tokens: 4200,
            seed: 7,
            data_position: SourcePosition { epoch: 1, cursor: 9 },
            layout: layout(),
            kernel: "bigram".into(),
            optimizer: "adamw".into(),
            run_config: "name = \"t\"\n[train]\nsteps = 10\n".into(),
        }
    }

    fn sample() -> (Vec<f32>, OptimizerState) {
        let params: Vec<f32> = (0..14).map(|i| i as f32 * 0.25 - 1.0).collect();
        let opt = OptimizerState {
            step: 42,
            buffers: vec![
                ("m".into(), (0..14).map(|i| i as f32 * 1e-3).collect()),
                ("v".into(), (0..14).map(|i| i as f32 * 1e-6).collect()),
            ],
        };
        (params, opt)
    }

    fn written() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ck.safetensors");
        let (params, opt) = sample();
        write(&path, &meta(), &params, &opt).expect("write");
        let bytes = std::fs::read(&path).expect("read");
        (dir, path, bytes)
    }

    #[test]
    fn round_trip() {
        let (_dir, path, _) = written();
        let ck = CheckpointFile::open(&path).expect("open");
        assert_eq!(ck.meta(), &meta());
        let (params, opt) = sample();
        assert_eq!(ck.params(&layout()).expect("params"), params);
        assert_eq!(ck.optimizer_state().expect("state"), opt);
        // The file is plain safetensors.
        let bytes = std::fs::read(&path).expect("read");
        let st = SafeTensors::deserialize(&bytes).expect("safetensors");
        assert_eq!(st.tensor("params/emb").expect("emb").shape(), &[3, 2]);
    }

    #[test]
    fn mismatched_layout_is_named() {
        let (_dir, path, _) = written();
        let ck = CheckpointFile::open(&path).expect("open");
        let other = ParamLayout::new(vec![
            TensorSpec { name: "emb".into(), shape: vec![4, 2], role: TensorRole::Embedding },
            TensorSpec { name: "norm".into(), shape: vec![2], role: TensorRole::Norm },
            TensorSpec { name: "head".into(), shape: vec![3, 2], role: TensorRole::Head },
        ])
        .expect("layout");
        let err = ck.params(&other).expect_err("mismatch").to_string();
        assert!(err.contains("`emb`") && err.contains("[3, 2]") && err.contains("[4, 2]"), "{err}");
    }

    #[test]
    fn foreign_safetensors_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.safetensors");
        let data = [1.0f32, 2.0];
        let v = F32View { shape: vec![2], data: &data };
        safetensors::serialize_to_file([("w", v)], &None, &path).expect("write");
        let err = CheckpointFile::open(&path).expect_err("foreign").to_string();
        assert!(err.contains("not a usable bitnet checkpoint"), "{err}");
    }

    #[test]
    fn write_refuses_wrong_arena() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, opt) = sample();
        let err = write(&dir.path().join("c"), &meta(), &[0.0; 3], &opt).expect_err("refused");
        assert!(err.to_string().contains("3 parameters"));
        assert!(std::fs::read_dir(dir.path()).expect("dir").next().is_none(), "nothing written");
    }

    #[test]
    fn bytes_verify_like_files_and_reseal_restores_the_checksum() {
        let (_dir, _path, bytes) = written();
        let ck = CheckpointFile::from_bytes("mem.ckpt", bytes.clone()).expect("from bytes");
        assert_eq!(ck.meta(), &meta());
        assert_eq!(ck.params(&layout()).expect("params"), sample().0);
        // An edited weight fails the checksum; resealed, the edit is accepted as written.
        let mut edited = bytes;
        let last = edited.len() - 1;
        edited[last] ^= 1;
        let err = CheckpointFile::from_bytes("mem.ckpt", edited.clone()).expect_err("edited");
        assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
        let resealed = reseal(&edited).expect("reseal");
        let ck = CheckpointFile::from_bytes("mem.ckpt", resealed).expect("resealed");
        assert_eq!(ck.meta(), &meta());
        assert!(reseal(b"not safetensors").is_err());
    }

    /// Found by the `checkpoint` fuzz target: a (resealed) checkpoint whose `layout` metadata
    /// gives a tensor `[4294967296, 4294967296]` made the layout's element count overflow, a
    /// panic with overflow checks on. It is now refused as a format error.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn overflowing_layout_shape_is_refused() {
        let (_dir, _path, bytes) = written();
        let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        let header = String::from_utf8(bytes[8..8 + n].to_vec()).expect("utf-8 header");
        let edited = header.replace(r#"\"shape\":[3,2]"#, r#"\"shape\":[4294967296,4294967296]"#);
        assert_ne!(edited, header);
        let mut file = (edited.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(edited.as_bytes());
        file.extend_from_slice(&bytes[8 + n..]);
        let resealed = reseal(&file).expect("reseal");
        let err = CheckpointFile::from_bytes("big.ckpt", resealed).expect_err("refused");
        assert!(matches!(err, CheckpointError::Format { .. }), "{err}");
        assert!(err.to_string().contains("more elements"), "{err}");
    }

    fn open_bytes(bytes: &[u8]) -> Result<(), CheckpointError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.safetensors");
        std::fs::write(&path, bytes).expect("write");
        let ck = CheckpointFile::open(&path)?;
        ck.params(&layout())?;
        ck.optimizer_state()?;
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_bit_flip_is_refused(bit in 0usize..100_000) {
            let (_dir, _path, mut bytes) = written();
            let bit = bit % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(open_bytes(&bytes).is_err(), "flip of bit {} accepted", bit);
        }

        #[test]
        fn any_truncation_is_refused(keep in 0usize..100_000) {
            let (_dir, _path, bytes) = written();
            let keep = keep % bytes.len();
            prop_assert!(open_bytes(&bytes[..keep]).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = open_bytes(&bytes);
        }
    }
}
