//! The weights container: the safetensors file that weight blobs, snapshots, downloads and
//! exports share, with metadata naming the format, codec, weight version and layout fingerprint.
//!
//! Readers check structure, names, shapes, dtypes and finiteness, and never panic on bad bytes;
//! integrity (SHA-256) is checked by the store and the transport over the whole blob.

use bitnet_framework::tensor::ParamLayout;
use bitnet_framework::weights::{
    ContainerInfo, FORMAT, FORMAT_VERSION, FP32, Weights, WeightsError, check_params, f32_bytes,
};
pub use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::borrow::Cow;
use std::collections::HashMap;

/// The conformance suite every weight codec runs (feature `conformance`).
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

/// A tensor to write into a container.
#[derive(Debug)]
pub struct ContainerTensor<'a> {
    /// Name (a layout name, or a codec's auxiliary name).
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian bytes.
    pub data: Cow<'a, [u8]>,
}

impl safetensors::View for ContainerTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Serialises a container: `tensors` plus the metadata naming `codec`, `version` and `layout`.
pub fn write_container(
    codec: &str,
    layout: &ParamLayout,
    version: u64,
    tensors: Vec<ContainerTensor<'_>>,
) -> Result<Vec<u8>, WeightsError> {
    let metadata: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("format_version", FORMAT_VERSION.to_string()),
        ("codec", codec.to_string()),
        ("version", version.to_string()),
        ("layout_fingerprint", layout.fingerprint()),
        ("params", layout.total_params().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let named = tensors.into_iter().map(|t| (t.name.clone(), t));
    let mut bytes = safetensors::serialize(named, &Some(metadata))
        .map_err(|e| WeightsError::Malformed(format!("cannot serialise weights: {e}")))?;
    canonicalise_header(&mut bytes)?;
    Ok(bytes)
}

/// Rewrites a safetensors header with its JSON keys sorted, in place.
///
/// `safetensors::serialize` writes the `__metadata__` map in `HashMap` iteration order, which
/// differs from one call to the next, so two encodings of the same weights would hash
/// differently; the coordinator and workers identify a weight version by its SHA-256, so the
/// bytes must be a function of the content. No crate option does this, hence by hand. Sorting
/// keeps the compact JSON the same length, so the header length and the data offsets (which are
/// relative to the end of the header) do not change.
pub fn canonicalise_header(bytes: &mut [u8]) -> Result<(), WeightsError> {
    let malformed = |what: &str| WeightsError::Malformed(format!("canonicalising header: {what}"));
    let len_bytes: [u8; 8] =
        bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| malformed("too short"))?;
    let n = usize::try_from(u64::from_le_bytes(len_bytes)).map_err(|_| malformed("length"))?;
    let header = bytes.get_mut(8..8 + n).ok_or_else(|| malformed("header past the end"))?;
    // serde_json's `Value` keeps objects in a BTreeMap (no `preserve_order` feature): sorted.
    let value: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| malformed(&e.to_string()))?;
    let sorted = serde_json::to_vec(&value).map_err(|e| malformed(&e.to_string()))?;
    // The original may carry trailing spaces as alignment padding; keep them.
    if sorted.len() > header.len() {
        return Err(malformed("sorted header is longer than the original"));
    }
    header[..sorted.len()].copy_from_slice(&sorted);
    header[sorted.len()..].fill(b' ');
    Ok(())
}

/// Reads a container's metadata without touching its tensors.
pub fn container_info(bytes: &[u8]) -> Result<ContainerInfo, WeightsError> {
    let (_, metadata) = SafeTensors::read_metadata(bytes)
        .map_err(|e| WeightsError::Malformed(format!("not a safetensors file: {e:?}")))?;
    let meta = metadata
        .metadata()
        .as_ref()
        .ok_or_else(|| WeightsError::Malformed("no metadata: not a bitnet weights file".into()))?;
    let get = |key: &str| {
        meta.get(key)
            .ok_or_else(|| WeightsError::Malformed(format!("metadata key `{key}` missing")))
    };
    if get("format")? != FORMAT {
        return Err(WeightsError::Malformed(format!("format is not `{FORMAT}`")));
    }
    let fv = get("format_version")?;
    if fv.parse::<u32>().ok() != Some(FORMAT_VERSION) {
        return Err(WeightsError::Malformed(format!(
            "unsupported weights format version `{fv}`; this build reads {FORMAT_VERSION}"
        )));
    }
    let version_text = get("version")?;
    let version = version_text.parse::<u64>().map_err(|_| {
        WeightsError::Malformed(format!("metadata `version` is not a number: `{version_text}`"))
    })?;
    Ok(ContainerInfo {
        codec: get("codec")?.clone(),
        version,
        layout_fingerprint: get("layout_fingerprint")?.clone(),
    })
}

/// Opens a container written by `codec` for `layout`: checks the metadata, the fingerprint,
/// and that the tensor names are exactly `expected_names`.
pub fn open_container<'a>(
    bytes: &'a [u8],
    codec: &str,
    layout: &ParamLayout,
    expected_names: usize,
) -> Result<(ContainerInfo, SafeTensors<'a>), WeightsError> {
    let info = container_info(bytes)?;
    if info.codec != codec {
        return Err(WeightsError::WrongCodec { expected: codec.into(), found: info.codec });
    }
    let expected = layout.fingerprint();
    if info.layout_fingerprint != expected {
        return Err(WeightsError::LayoutMismatch { expected, found: info.layout_fingerprint });
    }
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| WeightsError::Malformed(format!("not a safetensors file: {e:?}")))?;
    if st.len() != expected_names {
        return Err(WeightsError::Layout(format!(
            "{} tensors in the file, {expected_names} expected",
            st.len()
        )));
    }
    Ok((info, st))
}

/// Fetches tensor `name` and checks its dtype and shape.
pub fn tensor<'a>(
    st: &SafeTensors<'a>,
    name: &str,
    dtype: Dtype,
    shape: &[usize],
) -> Result<TensorView<'a>, WeightsError> {
    let view =
        st.tensor(name).map_err(|_| WeightsError::Layout(format!("tensor `{name}` missing")))?;
    if view.dtype() != dtype || view.shape() != shape {
        return Err(WeightsError::Layout(format!(
            "tensor `{name}` is {:?} {:?}, expected {dtype:?} {shape:?}",
            view.dtype(),
            view.shape()
        )));
    }
    Ok(view)
}

bitnet_framework::vectorized_fn!(
    /// Decodes little-endian f32 bytes into `out`, refusing non-finite values of tensor `name`.
    pub fn read_f32_into(name: &str, bytes: &[u8], out: &mut [f32]) -> Result<(), WeightsError>
        = read_f32_into_body, test read_f32_into_at
);

#[inline(always)]
fn read_f32_into_body(name: &str, bytes: &[u8], out: &mut [f32]) -> Result<(), WeightsError> {
    if bytes.len() != out.len() * 4 {
        return Err(WeightsError::Layout(format!("tensor `{name}` has the wrong byte length")));
    }
    // Branch-free over fixed-size blocks so it vectorises: a value is not finite when its
    // exponent bits are all ones.
    const EXPONENT: u32 = 0x7F80_0000;
    let mut non_finite = 0u32;
    for (ob, cb) in out.chunks_mut(64).zip(bytes.chunks(256)) {
        for (o, c) in ob.iter_mut().zip(cb.chunks_exact(4)) {
            let bits = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            non_finite |= u32::from(bits & EXPONENT == EXPONENT);
            *o = f32::from_bits(bits);
        }
    }
    if non_finite == 0 { Ok(()) } else { Err(WeightsError::NonFinite(name.to_string())) }
}

/// Writes the weights blob: version `version` of an arena laid out by `layout`.
pub fn write_blob(
    layout: &ParamLayout,
    version: u64,
    params: &[f32],
) -> Result<Vec<u8>, WeightsError> {
    check_params(layout, params)?;
    let tensors = layout
        .iter()
        .map(|(spec, range)| ContainerTensor {
            name: spec.name.clone(),
            dtype: Dtype::F32,
            shape: spec.shape.clone(),
            data: Cow::Owned(f32_bytes(&params[range])),
        })
        .collect();
    write_container(FP32, layout, version, tensors)
}

/// Reads a weights blob written by [`write_blob`] for `layout`; refuses one made for another
/// layout, with missing, extra or misshapen tensors, or non-finite values.
pub fn read_blob(layout: &ParamLayout, bytes: &[u8]) -> Result<Weights, WeightsError> {
    let (info, st) = open_container(bytes, FP32, layout, layout.tensors().len())?;
    let mut params = vec![0.0f32; layout.total_params()];
    for (spec, range) in layout.iter() {
        let view = tensor(&st, &spec.name, Dtype::F32, &spec.shape)?;
        read_f32_into(&spec.name, view.data(), &mut params[range])?;
    }
    Ok(Weights { version: info.version, params })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_framework::tensor::{TensorRole, TensorSpec};

    fn layout(rows: usize) -> ParamLayout {
        ParamLayout::new(vec![
            TensorSpec { name: "w".into(), shape: vec![rows, 3], role: TensorRole::BitLinear },
            TensorSpec { name: "g".into(), shape: vec![3], role: TensorRole::Norm },
        ])
        .expect("layout")
    }

    proptest::proptest! {
        /// The AVX2 and AVX-512 copies (where this CPU has them) read the baseline's values and
        /// refuse what it refuses.
        #[test]
        fn vectorized_copies_equal_the_baseline(
            words in proptest::collection::vec(proptest::prelude::any::<u32>(), 0..300),
        ) {
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            let mut want = vec![0.0f32; words.len()];
            let ok = read_f32_into_body("t", &bytes, &mut want).is_ok();
            for level in bitnet_framework::isa::IsaLevel::ALL {
                let mut got = vec![0.0f32; words.len()];
                let Some(r) = read_f32_into_at(level, "t", &bytes, &mut got) else { continue };
                proptest::prop_assert_eq!(r.is_ok(), ok, "{}", level);
                if ok {
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    proptest::prop_assert_eq!(bits(&got), bits(&want), "{}", level);
                }
            }
        }
    }

    #[test]
    fn blob_round_trips_with_version() {
        let l = layout(2);
        let params: Vec<f32> = (0..9).map(|i| i as f32 * 0.5 - 1.0).collect();
        let bytes = write_blob(&l, 42, &params).expect("write");
        assert_eq!(read_blob(&l, &bytes), Ok(Weights { version: 42, params }));
        let info = container_info(&bytes).expect("info");
        assert_eq!((info.codec.as_str(), info.version), ("fp32", 42));
    }

    #[test]
    fn encoding_is_byte_identical_every_time() {
        // Each call builds a fresh `HashMap` of metadata with its own random iteration order;
        // without canonicalisation about half of these pairs would differ.
        let l = layout(2);
        let params: Vec<f32> = (0..9).map(|i| i as f32).collect();
        let first = write_blob(&l, 7, &params).expect("write");
        for _ in 0..32 {
            assert_eq!(write_blob(&l, 7, &params).expect("write"), first);
        }
        let n = u64::from_le_bytes(first[..8].try_into().expect("8 bytes")) as usize;
        let header = std::str::from_utf8(&first[8..8 + n]).expect("utf-8 header");
        assert!(header.starts_with("{\"__metadata__\":{\"codec\":\"fp32\","), "{header}");
    }

    #[test]
    fn blob_for_another_layout_is_refused() {
        let bytes = write_blob(&layout(2), 1, &[0.0; 9]).expect("write");
        let err = read_blob(&layout(3), &bytes).expect_err("mismatch");
        assert!(matches!(err, WeightsError::LayoutMismatch { .. }), "{err}");
    }

    #[test]
    fn non_finite_params_are_refused_both_ways() {
        let l = layout(2);
        let mut params = vec![0.0; 9];
        params[7] = f32::NAN;
        assert_eq!(write_blob(&l, 1, &params), Err(WeightsError::NonFinite("g".into())));
        assert!(matches!(write_blob(&l, 1, &[0.0; 8]), Err(WeightsError::Size { .. })));
    }
}
