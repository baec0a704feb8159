//! Export -> load_inference gives the training forward's logits; the loader refuses damage.

use crate::common::{kernel_and_params, tiny_config, tokens};
use bitnet_b158::Precision;
use bitnet_framework::model::ModelKernel;
use proptest::prelude::*;

#[test]
fn inference_logits_match_the_training_forward() {
    let config = tiny_config();
    let (mut kernel, params) = kernel_and_params(config.clone(), Precision::Fp32, 5);
    let t = config.seq_len;
    let seq = tokens(t, config.vocab_size, 9);
    let logits = kernel.forward_logits(&params, &seq, 1, t).expect("logits");
    let bytes = kernel.export_inference(&params).expect("export");
    let mut model = kernel.load_inference(&bytes).expect("load");
    let v = config.vocab_size;
    let scale = logits.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    // Growing prefixes use the cache; a changed token recomputes from the change on.
    for len in 1..=t {
        let got = model.next_token_logits(&seq[..len]).expect("logits");
        let want = &logits[(len - 1) * v..len * v];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() <= 1e-3 * scale, "prefix {len}: {a} vs {b}");
        }
    }
    let mut other = seq.clone();
    other[2] = (other[2] + 1) % v as u32;
    let fresh = kernel.forward_logits(&params, &other, 1, t).expect("logits");
    let got = model.next_token_logits(&other).expect("logits");
    for (a, b) in got.iter().zip(&fresh[(t - 1) * v..]) {
        assert!((a - b).abs() <= 1e-3 * scale);
    }
    assert!(model.next_token_logits(&[]).is_err());
    assert!(model.next_token_logits(&[v as u32]).is_err());
    assert!(model.next_token_logits(&vec![0; t + 1]).is_err());
}

/// A prompt runs as one batch through every layer; one token at a time gives the same bits.
#[test]
fn a_batched_prompt_gives_the_logits_of_one_token_at_a_time() {
    // Long enough for batches of 16 and more (the AMX path, where the CPU has it).
    let config = bitnet_framework::model::ModelConfig { seq_len: 24, ..tiny_config() };
    let (kernel, params) = kernel_and_params(config.clone(), Precision::Fp32, 7);
    let t = config.seq_len;
    let seq = tokens(t, config.vocab_size, 3);
    let bytes = kernel.export_inference(&params).expect("export");
    let (mut stepped, mut batched) =
        (kernel.load_inference(&bytes).expect("a"), kernel.load_inference(&bytes).expect("b"));
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    for len in 1..=t {
        let one = bits(stepped.next_token_logits(&seq[..len]).expect("stepped"));
        // A fresh batch of `len` positions, then (the cache kept) the rest in one more batch.
        let mut fresh = kernel.load_inference(&bytes).expect("fresh");
        assert_eq!(one, bits(fresh.next_token_logits(&seq[..len]).expect("fresh")), "{len}");
        if len == t / 2 {
            batched.next_token_logits(&seq[..len]).expect("half");
        }
    }
    let whole = bits(stepped.next_token_logits(&seq).expect("whole"));
    assert_eq!(whole, bits(batched.next_token_logits(&seq).expect("second half")));
}

/// Several sequences in one call, each in its own slot, give each one the bits it gets alone:
/// prompts of different lengths together (more than 16 rows: the AMX path where the CPU has
/// it), then decode steps of one row per sequence with a slot dropped and a sequence changed
/// mid-way; bad calls are refused.
#[test]
fn sequences_decoded_together_get_the_logits_each_gets_alone() {
    let config = bitnet_framework::model::ModelConfig { seq_len: 24, ..tiny_config() };
    let (kernel, params) = kernel_and_params(config.clone(), Precision::Fp32, 7);
    let (t, v) = (config.seq_len, config.vocab_size);
    let bytes = kernel.export_inference(&params).expect("export");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let alone = |seq: &[u32]| {
        let mut m = kernel.load_inference(&bytes).expect("alone");
        bits(&m.next_token_logits(seq).expect("alone"))
    };
    let mut together = kernel.load_inference(&bytes).expect("together");
    assert!(together.slots() >= 4);
    let mut seqs: Vec<Vec<u32>> = (0..4).map(|i| tokens(t, v, 11 + i as u64)).collect();
    // Slots need not be contiguous.
    let slots = [0usize, 5, 2, 3];
    let mut lens = [7usize, 3, 9, 1];
    for step in 0..10 {
        if step == 4 {
            // A sequence changed in the middle recomputes from the change on.
            seqs[2][4] = (seqs[2][4] + 1) % v as u32;
        }
        // The sequence of slot 3 sits out steps 5 and 6; its cache stays.
        let active: Vec<usize> = (0..4).filter(|&i| !(i == 3 && (5..7).contains(&step))).collect();
        let call: Vec<(usize, &[u32])> =
            active.iter().map(|&i| (slots[i], &seqs[i][..lens[i]])).collect();
        let got = together.next_token_logits_batch(&call).expect("together");
        assert_eq!(got.len(), active.len());
        for (k, &i) in active.iter().enumerate() {
            assert_eq!(bits(&got[k]), alone(&seqs[i][..lens[i]]), "step {step}, sequence {i}");
        }
        for &i in &active {
            lens[i] = (lens[i] + 1).min(t);
        }
    }
    let s = &seqs[0][..3];
    assert!(together.next_token_logits_batch(&[(1, s), (1, s)]).is_err(), "a slot twice");
    assert!(together.next_token_logits_batch(&[(together.slots(), s)]).is_err(), "no such slot");
    assert!(together.next_token_logits_batch(&[(0, s), (1, &[])]).is_err(), "empty");
    // A refused call leaves the model usable.
    assert_eq!(bits(&together.next_token_logits_batch(&[(1, s)]).expect("ok")[0]), alone(s));
}

#[test]
fn export_holds_no_fp32_bitlinear_weights() {
    let config = tiny_config();
    let (kernel, params) = kernel_and_params(config.clone(), Precision::Fp32, 5);
    let bytes = kernel.export_inference(&params).expect("export");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    for spec in kernel.layout().tensors() {
        if spec.role == bitnet_framework::tensor::TensorRole::BitLinear {
            assert!(st.tensor(&spec.name).is_err());
            let t = st.tensor(&format!("{}.trits", spec.name)).expect("trits");
            assert_eq!(t.dtype(), safetensors::Dtype::U8);
        } else {
            assert_eq!(st.tensor(&spec.name).expect("dense").dtype(), safetensors::Dtype::F32);
        }
    }
    // Another model's weights are refused.
    let mut other = config;
    other.d_model = 32;
    let (k2, _) = kernel_and_params(other, Precision::Fp32, 1);
    assert!(k2.load_inference(&bytes).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Truncated or bit-flipped files never panic the loader.
    #[test]
    fn damaged_files_are_refused_without_panic(cut in 0usize..100_000, flip in any::<(usize, u8)>()) {
        let config = tiny_config();
        let (kernel, params) = kernel_and_params(config, Precision::Fp32, 5);
        let bytes = kernel.export_inference(&params).expect("export");
        let cut = cut % bytes.len();
        prop_assert!(kernel.load_inference(&bytes[..cut]).is_err());
        let mut flipped = bytes.clone();
        let i = flip.0 % flipped.len();
        flipped[i] ^= flip.1 | 1;
        if let Ok(mut m) = kernel.load_inference(&flipped) {
            // A flip in a value can leave a valid file; it must still predict without panicking.
            let _ = m.next_token_logits(&[1, 2, 3]);
        }
    }
}
