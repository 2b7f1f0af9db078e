//! Shapes of multi-head attention, shared by every backend.
//!
//!   q [B, Lq, H·d], k [B, Lk, H·d], v [B, Lk, H·dv]   (inputs; dv may differ from d)
//!   o, dO [B, Lq, H·dv]                               (output and its gradient)
//!   lse [B, H, Lq]                                    (log-sum-exp of each score row)
//!
//! Heads are column slices of the token rows: head h of q is q[b, i, h·d..(h+1)·d].
//! Causal attention (query i sees keys 0..=i) needs Lq == Lk.

use super::{bad_value, mismatch, rank, same_dim, same_shape};
use crate::backend::Attention;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor};

/// The sizes of one attention call, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    pub batch: usize,
    /// Lq.
    pub q_len: usize,
    /// Lk, the length of k and v.
    pub kv_len: usize,
    pub heads: usize,
    /// d, the width of one head of q and k (at least 1).
    pub head_dim: usize,
    /// dv, the width of one head of v and o.
    pub v_head_dim: usize,
    pub causal: bool,
}

impl AttentionDims {
    /// How many keys query `i` sees: all Lk of them, or 0..=i when causal.
    pub fn keys_seen(&self, i: usize) -> usize {
        if self.causal {
            (i + 1).min(self.kv_len)
        } else {
            self.kv_len
        }
    }
    /// The shape of o and dO, [B, Lq, H·dv].
    pub fn o_shape(&self) -> Shape {
        Shape::new([self.batch, self.q_len, self.heads * self.v_head_dim])
    }
    /// The shape of lse, [B, H, Lq].
    pub fn lse_shape(&self) -> Shape {
        Shape::new([self.batch, self.heads, self.q_len])
    }
}

/// Checks the inputs of a forward call.
pub fn forward(q: &Tensor, k: &Tensor, v: &Tensor, p: Attention) -> Result<AttentionDims> {
    inputs("attention", q, k, v, p)
}

/// Checks a backward call: the inputs as in the forward, then the saved o and lse and dO.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    d_o: &Tensor,
    p: Attention,
) -> Result<AttentionDims> {
    const OP: &str = "attention_backward";
    let n = inputs(OP, q, k, v, p)?;
    let want = n.o_shape();
    if *o.shape() != want {
        // Name the input the wrong dimension comes from: q for B and Lq, v for the width.
        let from_q = o.shape().rank() != 3 || o.dims()[..2] != q.dims()[..2];
        let (name, other) = if from_q { ("q", q) } else { ("v", v) };
        return Err(mismatch(
            OP,
            "o",
            o,
            name,
            other,
            format!("o must be [batch, queries, heads·v_head_dim] = {want}"),
        ));
    }
    same_shape(OP, "d_o", d_o, "o", o)?;
    let want = n.lse_shape();
    if *lse.shape() != want {
        return Err(mismatch(
            OP,
            "lse",
            lse,
            "q",
            q,
            format!(
                "lse must be [batch, heads, queries] = {want} with heads = {}",
                n.heads
            ),
        ));
    }
    Ok(n)
}

fn inputs(
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: Attention,
) -> Result<AttentionDims> {
    rank(op, "q", q, 3, "[batch, queries, heads·head_dim]")?;
    rank(op, "k", k, 3, "[batch, keys, heads·head_dim]")?;
    rank(op, "v", v, 3, "[batch, keys, heads·v_head_dim]")?;
    same_dim(op, "q", q, 0, "k", k, 0)?;
    same_dim(op, "v", v, 0, "k", k, 0)?;
    same_dim(op, "v", v, 1, "k", k, 1)?;
    same_dim(op, "q", q, 2, "k", k, 2)?;
    let (batch, lq, wq) = (q.dims()[0], q.dims()[1], q.dims()[2]);
    let (lk, wv) = (k.dims()[1], v.dims()[2]);
    if p.heads == 0 {
        return Err(bad_value(op, "heads", p.heads, "at least one head"));
    }
    if wq % p.heads != 0 || wv % p.heads != 0 {
        return Err(bad_value(
            op,
            "heads",
            p.heads,
            &format!(
                "heads must divide the last dimension of q {} and of v {}",
                q.shape(),
                v.shape()
            ),
        ));
    }
    if wq == 0 {
        // The scores are scaled by 1/sqrt(d): a head of width 0 has no meaning.
        return Err(Error::BadShape {
            op,
            name: "q",
            shape: q.shape().clone(),
            expected: "[batch, queries, heads·head_dim] with head_dim >= 1".into(),
        });
    }
    if p.causal && lq != lk {
        return Err(mismatch(
            op,
            "q",
            q,
            "k",
            k,
            "causal attention needs as many queries as keys",
        ));
    }
    if lk == 0 && lq > 0 {
        // A softmax over no keys is 0/0.
        return Err(mismatch(
            op,
            "q",
            q,
            "k",
            k,
            "every query needs at least one key",
        ));
    }
    Ok(AttentionDims {
        batch,
        q_len: lq,
        kv_len: lk,
        heads: p.heads,
        head_dim: wq / p.heads,
        v_head_dim: wv / p.heads,
        causal: p.causal,
    })
}
