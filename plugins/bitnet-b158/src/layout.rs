//! The parameter arena of the BitNet b1.58 decoder.

use bitnet_framework::model::ModelConfig;
use bitnet_framework::tensor::{LayoutError, ParamLayout, TensorRole, TensorSpec};

fn spec(name: String, shape: &[usize], role: TensorRole) -> TensorSpec {
    TensorSpec { name, shape: shape.to_vec(), role }
}

/// Tensors in arena order: embedding, then per block the attention norm, q/k/v/o, the FFN norm,
/// gate/up/down; then the final norm and the LM head. Linear weights are `[out, in]`.
pub fn model_layout(c: &ModelConfig) -> Result<ParamLayout, LayoutError> {
    let d = c.d_model;
    let h = c.ffn_hidden;
    let mut t = vec![spec("tok_emb.weight".into(), &[c.vocab_size, d], TensorRole::Embedding)];
    for l in 0..c.n_layers {
        let p = format!("blocks.{l}");
        t.push(spec(format!("{p}.attn_norm.weight"), &[d], TensorRole::Norm));
        for n in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            t.push(spec(format!("{p}.attn.{n}.weight"), &[d, d], TensorRole::BitLinear));
        }
        t.push(spec(format!("{p}.ffn_norm.weight"), &[d], TensorRole::Norm));
        t.push(spec(format!("{p}.ffn.gate_proj.weight"), &[h, d], TensorRole::BitLinear));
        t.push(spec(format!("{p}.ffn.up_proj.weight"), &[h, d], TensorRole::BitLinear));
        t.push(spec(format!("{p}.ffn.down_proj.weight"), &[d, h], TensorRole::BitLinear));
    }
    t.push(spec("norm.weight".into(), &[d], TensorRole::Norm));
    t.push(spec("lm_head.weight".into(), &[c.vocab_size, d], TensorRole::Head));
    ParamLayout::new(t)
}
