//! `Attention` (opset 23, the window sizes of 25 and the `nonpad_kv_seqlen` input of 24):
//! scaled dot-product attention with grouped KV heads (GQA: query head `h` reads KV head
//! `h / (q_heads / kv_heads)`, nothing repeated in memory), an optional mask (bool or
//! additive, broadcast, shorter than the keys: padded masked), a causal frontier after the
//! past keys, sliding windows, a key cache (`past_key` / `past_value` → `present_*`),
//! soft-capping, and the scores as a fourth output. It computes what onnx's reference does,
//! in f32; a row with every key masked gives zeros.

use super::{BufferPool, Fact, ImportCtx, Importer, Op, expect_dtype, optional, out, required};
use crate::error::{Result, ensure};
use crate::tensor::{DataType, Tensor};

/// The ops of this family.
pub const OPS: &[(&str, Importer)] = &[("Attention", import), ("com.microsoft::GroupQueryAttention", import_group_query)];

fn import_group_query(c: &ImportCtx) -> Result<Box<dyn Op>> {
    let heads = |key: &str| -> Result<usize> {
        let v = c.attrs.int(key, 0)?;
        ensure!(v > 0, "attribute {key} is {v}; a positive head count is needed");
        Ok(v as usize)
    };
    for (key, what) in [("smooth_softmax", "smooth softmax"), ("qk_output", "the scores output")] {
        if c.attrs.int(key, 0)? != 0 {
            return Err(super::unsupported_attr(what.into()));
        }
    }
    let scale = c.attrs.float("scale", 0.0)?;
    let (q_heads, kv_heads) = (heads("num_heads")?, heads("kv_num_heads")?);
    Ok(Box::new(GroupQueryAttention {
        attention: Attention {
            causal: true,
            q_heads: Some(q_heads),
            kv_heads: Some(kv_heads),
            scale: (scale != 0.0).then_some(scale),
            softcap: c.attrs.float("softcap", 0.0)?,
            scores_mode: 0,
            left_window: c.attrs.int("local_window_size", -1)?,
            right_window: -1,
        },
        rotary: (c.attrs.int("do_rotary", 0)? != 0).then(|| c.attrs.int("rotary_interleaved", 0).map(|i| i != 0)).transpose()?,
    }))
}

fn import(c: &ImportCtx) -> Result<Box<dyn Op>> {
    let heads = |key: &str| -> Result<Option<usize>> {
        match c.attrs.int_opt(key)? {
            None => Ok(None),
            Some(v) if v > 0 => Ok(Some(v as usize)),
            Some(v) => Err(super::unsupported_attr(format!("Attention {key} {v}"))),
        }
    };
    let scale = c.attrs.has("scale").then(|| c.attrs.float("scale", 1.0)).transpose()?;
    let mode = c.attrs.int("qk_matmul_output_mode", 0)?;
    ensure!((0..=3).contains(&mode), "qk_matmul_output_mode {mode} (0 to 3 are defined)");
    Ok(Box::new(Attention {
        causal: c.attrs.int("is_causal", 0)? != 0,
        q_heads: heads("q_num_heads")?,
        kv_heads: heads("kv_num_heads")?,
        scale,
        softcap: c.attrs.float("softcap", 0.0)?,
        scores_mode: mode as u8,
        left_window: c.attrs.int("left_window_size", -1)?,
        right_window: c.attrs.int("right_window_size", -1)?,
    }))
}

/// `Attention(Q, K, V, attn_mask?, past_key?, past_value?, nonpad_kv_seqlen?)` →
/// `(Y, present_key, present_value, qk_matmul_output)`.
#[derive(Debug)]
pub struct Attention {
    causal: bool,
    /// Heads of 3-D (packed) inputs.
    q_heads: Option<usize>,
    kv_heads: Option<usize>,
    /// Default `1 / √head`.
    scale: Option<f32>,
    /// `softcap · tanh(scores / softcap)` when positive.
    softcap: f32,
    /// Which scores the fourth output holds: 0 and 1 the (soft-capped) products, 2 with the
    /// mask added, 3 the softmax.
    scores_mode: u8,
    /// Keys further left (right) of a query's position than this are masked; −1: no bound.
    left_window: i64,
    right_window: i64,
}

/// The sizes one evaluation works with.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    q_heads: usize,
    kv_heads: usize,
    q_len: usize,
    /// Past plus new keys.
    kv_len: usize,
    past: usize,
    new: usize,
    head: usize,
    v_head: usize,
    /// Q, K and V come as `[batch, sequence, heads · head]`.
    packed: bool,
}

impl Attention {
    fn dims(&self, q: &[usize], k: &[usize], v: &[usize], past: Option<&[usize]>) -> Result<Dims> {
        ensure!(q.len() == k.len() && k.len() == v.len(), "Q, K and V have ranks {}, {} and {}", q.len(), k.len(), v.len());
        let d = match q.len() {
            4 => {
                ensure!(self.q_heads.is_none() && self.kv_heads.is_none(), "q_num_heads and kv_num_heads are for 3-D inputs");
                Dims {
                    batch: q[0],
                    q_heads: q[1],
                    kv_heads: k[1],
                    q_len: q[2],
                    kv_len: k[2],
                    past: 0,
                    new: k[2],
                    head: q[3],
                    v_head: v[3],
                    packed: false,
                }
            }
            3 => {
                let (Some(qh), Some(kvh)) = (self.q_heads, self.kv_heads) else {
                    return Err(crate::error::Error::Op("3-D inputs need q_num_heads and kv_num_heads".into()));
                };
                ensure!(
                    q[2].is_multiple_of(qh) && k[2].is_multiple_of(kvh) && v[2].is_multiple_of(kvh),
                    "hidden sizes {q:?} {k:?} {v:?} do not split into the heads"
                );
                let (head, v_head) = (q[2] / qh, v[2] / kvh);
                ensure!(k[2] / kvh == head, "K's head size {} differs from Q's {head}", k[2] / kvh);
                Dims { batch: q[0], q_heads: qh, kv_heads: kvh, q_len: q[1], kv_len: k[1], past: 0, new: k[1], head, v_head, packed: true }
            }
            r => return Err(crate::error::Error::Op(format!("Q has rank {r}; 3 or 4 expected"))),
        };
        ensure!(k[0] == d.batch && v[0] == d.batch, "batch sizes differ: {q:?} {k:?} {v:?}");
        ensure!(
            d.kv_heads > 0 && d.q_heads.is_multiple_of(d.kv_heads),
            "{} query heads do not group over {} KV heads",
            d.q_heads,
            d.kv_heads
        );
        let v_len = if d.packed { v[1] } else { v[2] };
        ensure!(v_len == d.new, "V holds {v_len} positions, K {}", d.new);
        if !d.packed {
            ensure!(k[3] == d.head && v[1] == d.kv_heads, "K {k:?} and V {v:?} do not match Q {q:?}");
        }
        let past = match past {
            None => 0,
            Some(p) => {
                ensure!(p.len() == 4 && p[0] == d.batch && p[1] == d.kv_heads && p[3] == d.head, "past_key {p:?} does not match K");
                p[2]
            }
        };
        Ok(Dims { past, kv_len: past + d.new, ..d })
    }

    fn output_shapes(d: &Dims) -> [Vec<usize>; 4] {
        let y = if d.packed { vec![d.batch, d.q_len, d.q_heads * d.v_head] } else { vec![d.batch, d.q_heads, d.q_len, d.v_head] };
        [
            y,
            vec![d.batch, d.kv_heads, d.kv_len, d.head],
            vec![d.batch, d.kv_heads, d.kv_len, d.v_head],
            vec![d.batch, d.q_heads, d.q_len, d.kv_len],
        ]
    }
}

/// `[batch, heads, len, head]` values of a 4-D input, or of a packed `[batch, len, heads ·
/// head]` one (as `d` says), with the cache of `past_len` positions in front along `len`.
fn heads_first(x: &[f32], past: Option<&[f32]>, d: &Dims, heads: usize, (past_len, new): (usize, usize), head: usize) -> Vec<f32> {
    let len = past_len + new;
    let mut y = Vec::with_capacity(d.batch * heads * len * head);
    for b in 0..d.batch {
        for h in 0..heads {
            if let Some(p) = past {
                y.extend_from_slice(&p[(b * heads + h) * past_len * head..][..past_len * head]);
            }
            for t in 0..new {
                let at = if d.packed { ((b * new + t) * heads + h) * head } else { ((b * heads + h) * new + t) * head };
                y.extend_from_slice(&x[at..at + head]);
            }
        }
    }
    y
}

/// An additive mask's value at `(b, h, i, j)`: the mask broadcast right-aligned over
/// `[batch, heads, q_len, its own last dim]`, keys past its last dim masked.
fn mask_at(mask: &Tensor, values: &[f32], b: usize, h: usize, i: usize, j: usize) -> f32 {
    let shape = mask.shape();
    let r = shape.len();
    if j >= shape[r - 1] {
        return f32::NEG_INFINITY;
    }
    let index = [b, h, i, j];
    let mut at = 0;
    for (d, &n) in shape.iter().enumerate() {
        let coordinate = index[4 - r + d];
        at = at * n + if n == 1 { 0 } else { coordinate };
    }
    values[at]
}

impl Op for Attention {
    fn work(&self, inputs: &[Option<&Fact>], outputs: &[Fact]) -> super::Work {
        let head = inputs[0].and_then(|q| q.shape.last().copied()).unwrap_or(0);
        let scores: usize = outputs.get(3).map_or(0, |f| f.shape.iter().product());
        super::Work::macs(2 * scores * head / self.q_heads.unwrap_or(1).max(1), false)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (q, k, v) = (required(inputs, 0)?, required(inputs, 1)?, required(inputs, 2)?);
        for (f, what) in [(q, "Q"), (k, "K"), (v, "V")] {
            expect_dtype(f, &[DataType::F32], what)?;
        }
        ensure!(optional(inputs, 4).is_some() == optional(inputs, 5).is_some(), "past_key and past_value come together");
        ensure!(optional(inputs, 4).is_none() || optional(inputs, 6).is_none(), "nonpad_kv_seqlen cannot come with a cache");
        let d = self.dims(&q.shape, &k.shape, &v.shape, optional(inputs, 4).map(|f| &f.shape[..]))?;
        if let Some(m) = optional(inputs, 3) {
            ensure!(matches!(m.dtype, DataType::F32 | DataType::Bool), "attn_mask has dtype {}", m.dtype);
            ensure!((1..=4).contains(&m.shape.len()), "attn_mask has rank {}", m.shape.len());
            let full = [d.batch, d.q_heads, d.q_len, d.kv_len];
            let r = m.shape.len();
            for (n, &want) in m.shape[..r - 1].iter().zip(&full[4 - r..3]) {
                ensure!(*n == 1 || *n == want, "attn_mask {:?} does not broadcast to {full:?}", m.shape);
            }
            ensure!(m.shape[r - 1] <= d.kv_len, "attn_mask covers {} keys of {}", m.shape[r - 1], d.kv_len);
        }
        if let Some(p) = optional(inputs, 5) {
            ensure!(p.shape == [d.batch, d.kv_heads, d.past, d.v_head], "past_value {:?} does not match V", p.shape);
        }
        if let Some(n) = optional(inputs, 6) {
            ensure!(n.shape.iter().product::<usize>() == d.batch, "nonpad_kv_seqlen holds one length per batch");
        }
        Ok(Attention::output_shapes(&d).into_iter().map(|s| Fact::new(DataType::F32, s)).collect())
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        let (q, k, v) = (required(inputs, 0)?, required(inputs, 1)?, required(inputs, 2)?);
        let (past_key, past_value) = (optional(inputs, 4), optional(inputs, 5));
        let d = self.dims(q.shape(), k.shape(), v.shape(), past_key.map(Tensor::shape))?;
        let (past_key, past_value) =
            (past_key.map(|t| t.as_slice::<f32>()).transpose()?, past_value.map(|t| t.as_slice::<f32>()).transpose()?);
        let keys = heads_first(k.as_slice()?, past_key, &d, d.kv_heads, (d.past, d.new), d.head);
        let values = heads_first(v.as_slice()?, past_value, &d, d.kv_heads, (d.past, d.new), d.v_head);
        let queries = heads_first(q.as_slice()?, None, &d, d.q_heads, (0, d.q_len), d.head);
        let mask = optional(inputs, 3);
        let mask_values: Option<Vec<f32>> = mask
            .map(|m| -> Result<Vec<f32>> {
                Ok(match m.dtype() {
                    DataType::Bool => m.as_bools()?.iter().map(|&b| if b != 0 { 0.0 } else { f32::NEG_INFINITY }).collect(),
                    _ => m.as_slice::<f32>()?.to_vec(),
                })
            })
            .transpose()?;
        let nonpad = optional(inputs, 6).map(Tensor::to_i64s).transpose()?;
        // √scale on each side, as the reference does.
        let scale = self.scale.unwrap_or(1.0 / (d.head as f32).sqrt()).sqrt();
        let group = d.q_heads / d.kv_heads;
        let [y_shape, key_shape, value_shape, scores_shape] = Attention::output_shapes(&d);
        let mut y = vec![0f32; d.batch * d.q_heads * d.q_len * d.v_head];
        let mut exposed = vec![0f32; d.batch * d.q_heads * d.q_len * d.kv_len];
        let (mut scores, mut bias) = (vec![0f32; d.kv_len], vec![0f32; d.kv_len]);
        for b in 0..d.batch {
            // Where the query block starts among the keys: after the cache, or at the last
            // non-padded key.
            let offset = match &nonpad {
                Some(n) => n[b] - d.q_len as i64,
                None => d.past as i64,
            };
            for h in 0..d.q_heads {
                let kv = b * d.kv_heads + h / group;
                for i in 0..d.q_len {
                    let query = &queries[((b * d.q_heads + h) * d.q_len + i) * d.head..][..d.head];
                    for j in 0..d.kv_len {
                        let key = &keys[(kv * d.kv_len + j) * d.head..][..d.head];
                        let mut s: f32 = query.iter().zip(key).map(|(&a, &c)| (a * scale) * (c * scale)).sum();
                        if self.softcap > 0.0 {
                            s = self.softcap * super::math::tanh(s / self.softcap);
                        }
                        scores[j] = s;
                        let mut m = match (mask, &mask_values) {
                            (Some(t), Some(values)) => mask_at(t, values, b, h, i, j),
                            _ => 0.0,
                        };
                        let distance = i as i64 + offset - j as i64;
                        let outside = (self.causal && distance < 0)
                            || (self.left_window >= 0 && distance > self.left_window)
                            || (self.right_window >= 0 && -distance > self.right_window)
                            || nonpad.as_ref().is_some_and(|n| j as i64 >= n[b]);
                        if outside {
                            m = f32::NEG_INFINITY;
                        }
                        bias[j] = m;
                    }
                    let row = ((b * d.q_heads + h) * d.q_len + i) * d.kv_len;
                    let exposed_row = &mut exposed[row..row + d.kv_len];
                    if self.scores_mode <= 1 {
                        exposed_row.copy_from_slice(&scores);
                    }
                    for (s, &m) in scores.iter_mut().zip(&bias) {
                        *s += m;
                    }
                    if self.scores_mode == 2 {
                        exposed_row.copy_from_slice(&scores);
                    }
                    // Softmax; a row whose mask (or every score) is −∞ attends nothing.
                    if bias.iter().all(|&m| m == f32::NEG_INFINITY) || scores.iter().all(|&s| s == f32::NEG_INFINITY) {
                        scores.fill(0.0);
                    } else {
                        super::norm::softmax_lane(&mut scores, false);
                    }
                    if self.scores_mode == 3 {
                        exposed_row.copy_from_slice(&scores);
                    }
                    let at = if d.packed { ((b * d.q_len + i) * d.q_heads + h) * d.v_head } else { row / d.kv_len * d.v_head };
                    let out_row = &mut y[at..at + d.v_head];
                    for (j, &p) in scores.iter().enumerate() {
                        let value = &values[(kv * d.kv_len + j) * d.v_head..][..d.v_head];
                        for (o, &x) in out_row.iter_mut().zip(value) {
                            *o += p * x;
                        }
                    }
                }
            }
        }
        Ok(vec![out(y_shape, y)?, out(key_shape, keys)?, out(value_shape, values)?, out(scores_shape, exposed)?])
    }
}

/// com.microsoft `GroupQueryAttention(query, key?, value?, past_key?, past_value?, seqlens_k,
/// total_sequence_length, cos_cache?, sin_cache?)` → `(output, present_key, present_value)`,
/// what onnxruntime-genai's model builder writes for a decoder's attention: 3-D inputs (or Q,
/// K and V packed in `query`), the new keys and values after the cache, a causal frontier
/// after it, optionally the rotary embedding of Q and K at their positions first. It runs as
/// [`Attention`] does. Sequences of a batch must be equally long (`seqlens_k` all
/// `total_sequence_length − 1`, which is the cache plus the new tokens): padded batches and a
/// cache buffer longer than its contents are refused.
#[derive(Debug)]
pub struct GroupQueryAttention {
    attention: Attention,
    /// With rotary embedding: whether its pairs are interleaved.
    rotary: Option<bool>,
}

impl GroupQueryAttention {
    /// Q, K and V: separate, or split from a packed `query`.
    fn split(&self, inputs: &[Option<&Tensor>]) -> Result<[Tensor; 3]> {
        let q = required(inputs, 0)?;
        if let (Some(k), Some(v)) = (optional(inputs, 1), optional(inputs, 2)) {
            return Ok([q.clone(), k.clone(), v.clone()]);
        }
        let (qh, kvh) = (self.attention.q_heads.unwrap_or(1), self.attention.kv_heads.unwrap_or(1));
        let [batch, seq, width] = q.shape()[..] else {
            return Err(crate::error::Error::Op(format!("packed query of shape {:?}", q.shape())));
        };
        ensure!(width.is_multiple_of(qh + 2 * kvh), "packed query width {width} is not {qh} + 2 × {kvh} heads");
        let head = width / (qh + 2 * kvh);
        let values = q.as_slice::<f32>()?;
        let part = |from: usize, heads: usize| -> Result<Tensor> {
            let v: Vec<f32> = values.chunks_exact(width).flat_map(|row| row[from * head..(from + heads) * head].iter().copied()).collect();
            Tensor::from_vec(vec![batch, seq, heads * head], v)
        };
        Ok([part(0, qh)?, part(qh, kvh)?, part(qh + kvh, kvh)?])
    }

    /// The cache's length, checking that every sequence is the cache plus the new tokens.
    fn past(&self, inputs: &[Option<&Tensor>], new: usize) -> Result<usize> {
        let past = optional(inputs, 3).map_or(0, |p| p.shape().get(2).copied().unwrap_or(0));
        let total = required(inputs, 6)?.to_i64s()?;
        let lengths = required(inputs, 5)?.to_i64s()?;
        ensure!(total.len() == 1, "total_sequence_length holds {} values; one expected", total.len());
        if total[0] != (past + new) as i64 || lengths.iter().any(|&l| l + 1 != total[0]) {
            return Err(super::unsupported_attr(format!(
                "sequences of other lengths than the cache ({past}) plus the new tokens ({new}): seqlens_k {lengths:?}, total_sequence_length {}",
                total[0]
            )));
        }
        Ok(past)
    }
}

impl Op for GroupQueryAttention {
    fn work(&self, inputs: &[Option<&Fact>], outputs: &[Fact]) -> super::Work {
        self.attention.work(inputs, outputs)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let q = required(inputs, 0)?;
        expect_dtype(q, &[DataType::F32], "query")?;
        let (qh, kvh) = (self.attention.q_heads.unwrap_or(1), self.attention.kv_heads.unwrap_or(1));
        let [batch, seq, width] = q.shape[..] else {
            return Err(crate::error::Error::Op(format!("query of shape {:?}; 3-D expected", q.shape)));
        };
        let head = match optional(inputs, 1) {
            Some(_) => width / qh,
            None => width / (qh + 2 * kvh),
        };
        let past = optional(inputs, 3).map_or(0, |p| p.shape.get(2).copied().unwrap_or(0));
        let present = Fact::new(DataType::F32, vec![batch, kvh, past + seq, head]);
        Ok(vec![Fact::new(DataType::F32, vec![batch, seq, qh * head]), present.clone(), present])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let [mut q, mut k, v] = self.split(inputs)?;
        let past = self.past(inputs, q.shape()[1])?;
        if let Some(interleaved) = self.rotary {
            let (cos, sin) = (required(inputs, 7)?, required(inputs, 8)?);
            let offset = Tensor::from_vec(vec![1], vec![past as i64])?;
            let rotate = |x: &Tensor, heads: usize, pool: &mut BufferPool| -> Result<Tensor> {
                let rotary = super::rotary::RotaryEmbedding::new(interleaved, heads, 2 * cos.shape().get(1).copied().unwrap_or(0));
                Ok(rotary.eval(&[Some(x), Some(&offset), Some(cos), Some(sin)], pool)?.remove(0))
            };
            q = rotate(&q, self.attention.q_heads.unwrap_or(1), pool)?;
            k = rotate(&k, self.attention.kv_heads.unwrap_or(1), pool)?;
        }
        let mut outputs = self.attention.eval(&[Some(&q), Some(&k), Some(&v), None, optional(inputs, 3), optional(inputs, 4)], pool)?;
        outputs.truncate(3);
        Ok(outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    fn attention(causal: bool) -> Attention {
        Attention { causal, q_heads: None, kv_heads: None, scale: None, softcap: 0.0, scores_mode: 0, left_window: -1, right_window: -1 }
    }

    /// Two query heads sharing one KV head, with a cache of one position and a causal
    /// frontier after it, against the definition computed directly.
    #[test]
    fn grouped_heads_with_a_cache_and_causal_mask() {
        let (q_len, new, past, head) = (2usize, 2usize, 1usize, 2usize);
        let q: Vec<f32> = (0..2 * q_len * head).map(|i| (i as f32 * 0.37).sin()).collect();
        let k: Vec<f32> = (0..new * head).map(|i| (i as f32 * 0.91).cos()).collect();
        let v: Vec<f32> = (0..new * head).map(|i| i as f32 - 1.5).collect();
        let (pk, pv) = (vec![0.3f32, -0.2], vec![2.0f32, 0.5]);
        let inputs = [
            f32t(&[1, 2, q_len, head], &q),
            f32t(&[1, 1, new, head], &k),
            f32t(&[1, 1, new, head], &v),
            None,
            f32t(&[1, 1, past, head], &pk),
            f32t(&[1, 1, past, head], &pv),
        ];
        let out = run(&attention(true), &inputs).unwrap();
        let keys: Vec<&[f32]> = [&pk[..], &k[..2], &k[2..]].to_vec();
        let vals: Vec<&[f32]> = [&pv[..], &v[..2], &v[2..]].to_vec();
        let mut want = Vec::new();
        for h in 0..2 {
            for i in 0..q_len {
                let query = &q[(h * q_len + i) * head..][..head];
                // Query i sees the cache and new keys up to itself.
                let seen = past + i + 1;
                let s: Vec<f32> =
                    keys[..seen].iter().map(|key| query.iter().zip(*key).map(|(a, b)| a * b).sum::<f32>() / (head as f32).sqrt()).collect();
                let max = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - max).exp()).collect();
                let total: f32 = e.iter().sum();
                want.extend((0..head).map(|c| e.iter().zip(&vals).map(|(p, v)| p / total * v[c]).sum::<f32>()));
            }
        }
        assert_close(&out[0], &[1, 2, q_len, head], &want);
        assert_close(&out[1], &[1, 1, past + new, head], &[pk, k].concat());
        assert_close(&out[2], &[1, 1, past + new, head], &[pv, v].concat());
    }

    /// Packed 3-D inputs give the 4-D result in packed layout; a bool mask that masks a whole
    /// row gives zeros there.
    #[test]
    fn packed_inputs_and_a_fully_masked_row() {
        let op = Attention { q_heads: Some(2), kv_heads: Some(2), ..attention(false) };
        let q = f32t(&[1, 1, 4], &[1., 0., 0., 1.]);
        let k = f32t(&[1, 2, 4], &[1., 0., 0., 1., 0., 1., 1., 0.]);
        let v = f32t(&[1, 2, 4], &[1., 2., 3., 4., 5., 6., 7., 8.]);
        let mask = Some(Tensor::from_bools(vec![2, 1, 2], vec![true, true, false, false]).unwrap());
        let y = run(&op, &[q, k, v, mask]).unwrap().remove(0);
        let (p, r) = ((1f32 / 2f32.sqrt()).exp(), 1f32);
        let first = [(p * 1. + r * 5.) / (p + r), (p * 2. + r * 6.) / (p + r)];
        assert_close(&y, &[1, 1, 4], &[first[0], first[1], 0., 0.]);
    }

    /// GroupQueryAttention refuses sequences that are not the cache plus the new tokens (a
    /// padded batch), by name, rather than attend to the wrong keys.
    #[test]
    fn group_query_attention_refuses_padded_batches() {
        let op = GroupQueryAttention { attention: Attention { q_heads: Some(2), kv_heads: Some(1), ..attention(true) }, rotary: None };
        let (q, k, v) = (f32t(&[2, 1, 4], &[0.5; 8]), f32t(&[2, 1, 2], &[1.0; 4]), f32t(&[2, 1, 2], &[2.0; 4]));
        let ints = |shape: &[usize], v: Vec<i32>| Some(Tensor::from_vec(shape.to_vec(), v).unwrap());
        let ok = run(&op, &[q.clone(), k.clone(), v.clone(), None, None, ints(&[2], vec![0, 0]), ints(&[], vec![1])]).unwrap();
        assert_close(&ok[0], &[2, 1, 4], &[2.0; 8]);
        let padded = run(&op, &[q, k, v, None, None, ints(&[2], vec![0, 1]), ints(&[], vec![2])]).unwrap_err().to_string();
        assert!(padded.contains("seqlens_k [0, 1]"), "{padded}");
    }
}
