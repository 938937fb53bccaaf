//! LSTM (forward, reverse, bidirectional; peepholes, clip, sequence lengths).

use super::matmul::{Matrix, sgemm};
use super::{BufferPool, Fact, ImportCtx, Importer, Op, expect_dtype, optional, out, required, unsupported_attr};
use crate::error::{Result, ensure};
use crate::tensor::{DataType, Tensor};

/// The ops of this family.
pub const OPS: &[(&str, Importer)] = &[("LSTM", import_lstm)];

/// `LSTM(X, W, R, B?, sequence_lens?, initial_h?, initial_c?, P?)`, gate order i, o, f, c.
#[derive(Debug)]
pub struct Lstm {
    hidden: usize,
    directions: Vec<bool>,
    clip: Option<f32>,
    input_forget: bool,
}

fn import_lstm(c: &ImportCtx) -> Result<Box<dyn Op>> {
    let hidden = c.attrs.int_opt("hidden_size")?.ok_or_else(|| unsupported_attr("LSTM without hidden_size".into()))?;
    ensure!((1..=1 << 16).contains(&hidden), "hidden_size {hidden} is out of range");
    let directions = match c.attrs.string("direction", "forward")?.as_str() {
        "forward" => vec![false],
        "reverse" => vec![true],
        "bidirectional" => vec![false, true],
        other => return Err(unsupported_attr(format!("LSTM direction '{other}'"))),
    };
    if let Some(acts) = c.attrs.strings_opt("activations")? {
        let default = ["Sigmoid", "Tanh", "Tanh"];
        if acts.iter().enumerate().any(|(i, a)| a != default[i % 3]) {
            return Err(unsupported_attr(format!("LSTM activations {acts:?}")));
        }
    }
    if c.attrs.int("layout", 0)? != 0 {
        return Err(unsupported_attr("LSTM layout 1".into()));
    }
    Ok(Box::new(Lstm {
        hidden: hidden as usize,
        directions,
        clip: c.attrs.has("clip").then(|| c.attrs.float("clip", 0.0)).transpose()?,
        input_forget: c.attrs.int("input_forget", 0)? != 0,
    }))
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Lstm {
    fn check(&self, inputs: &[Option<&Fact>]) -> Result<(usize, usize, usize)> {
        let (x, w, r) = (required(inputs, 0)?, required(inputs, 1)?, required(inputs, 2)?);
        for (f, what) in [(x, "X"), (w, "W"), (r, "R")] {
            expect_dtype(f, &[DataType::F32], what)?;
        }
        ensure!(x.shape.len() == 3, "X {:?} should be [seq, batch, input]", x.shape);
        let (seq, batch, input) = (x.shape[0], x.shape[1], x.shape[2]);
        let (d, h) = (self.directions.len(), self.hidden);
        ensure!(w.shape == [d, 4 * h, input], "W {:?} should be [{d}, {}, {input}]", w.shape, 4 * h);
        ensure!(r.shape == [d, 4 * h, h], "R {:?} should be [{d}, {}, {h}]", r.shape, 4 * h);
        let expect = |i: usize, shape: &[usize], what: &str| -> Result<()> {
            if let Some(f) = optional(inputs, i) {
                ensure!(f.shape == shape, "{what} {:?} should be {shape:?}", f.shape);
            }
            Ok(())
        };
        expect(3, &[d, 8 * h], "B")?;
        expect(4, &[batch], "sequence_lens")?;
        expect(5, &[d, batch, h], "initial_h")?;
        expect(6, &[d, batch, h], "initial_c")?;
        expect(7, &[d, 3 * h], "P")?;
        Ok((seq, batch, input))
    }
}

impl Op for Lstm {
    fn work(&self, inputs: &[Option<&Fact>], _outputs: &[Fact]) -> super::Work {
        // Per step, batch row and direction: the four gates from the input and the state.
        let (seq, batch, input) = (super::input_dim(inputs, 0, 0), super::input_dim(inputs, 0, 1), super::input_dim(inputs, 0, 2));
        let per_row = 4 * self.hidden * (input + self.hidden);
        super::Work::macs(seq * batch * self.directions.len() * per_row, false)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (seq, batch, _) = self.check(inputs)?;
        let (d, h) = (self.directions.len(), self.hidden);
        Ok(vec![
            Fact::new(DataType::F32, vec![seq, d, batch, h]),
            Fact::new(DataType::F32, vec![d, batch, h]),
            Fact::new(DataType::F32, vec![d, batch, h]),
        ])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        let facts: Vec<Option<Fact>> = inputs.iter().map(|t| t.map(|t| Fact::new(t.dtype(), t.shape().to_vec()))).collect();
        let (seq, batch, input) = self.check(&facts.iter().map(|f| f.as_ref()).collect::<Vec<_>>())?;
        let (d, h) = (self.directions.len(), self.hidden);
        let x = required(inputs, 0)?.as_slice::<f32>()?;
        let w = required(inputs, 1)?.as_slice::<f32>()?;
        let r = required(inputs, 2)?.as_slice::<f32>()?;
        let f32_opt = |i: usize| optional(inputs, i).map(|t| t.as_slice::<f32>()).transpose();
        let (b, h0, c0, p) = (f32_opt(3)?, f32_opt(5)?, f32_opt(6)?, f32_opt(7)?);
        let lens: Vec<usize> = match optional(inputs, 4) {
            Some(t) => t.to_i64s()?.iter().map(|&l| l.clamp(0, seq as i64) as usize).collect(),
            None => vec![seq; batch],
        };
        let mut y = vec![0f32; seq * d * batch * h];
        let mut y_h = vec![0f32; d * batch * h];
        let mut y_c = vec![0f32; d * batch * h];
        for (di, &reverse) in self.directions.iter().enumerate() {
            let wd = &w[di * 4 * h * input..(di + 1) * 4 * h * input];
            let rd = &r[di * 4 * h * h..(di + 1) * 4 * h * h];
            // X·Wᵀ for all steps at once: [seq·batch, 4h].
            let mut xw = vec![0f32; seq * batch * 4 * h];
            sgemm(1.0, Matrix::dense(x, seq * batch, input), Matrix::dense(wd, 4 * h, input).t(), 0.0, &mut xw);
            let bias: Vec<f32> = match b {
                Some(b) => (0..4 * h).map(|j| b[di * 8 * h + j] + b[di * 8 * h + 4 * h + j]).collect(),
                None => vec![0.0; 4 * h],
            };
            let peep = p.map(|p| &p[di * 3 * h..(di + 1) * 3 * h]);
            let mut hs = h0.map_or_else(|| vec![0f32; batch * h], |v| v[di * batch * h..(di + 1) * batch * h].to_vec());
            let mut cs = c0.map_or_else(|| vec![0f32; batch * h], |v| v[di * batch * h..(di + 1) * batch * h].to_vec());
            let mut gates = vec![0f32; batch * 4 * h];
            for step in 0..seq {
                let t = if reverse { seq - 1 - step } else { step };
                sgemm(1.0, Matrix::dense(&hs, batch, h), Matrix::dense(rd, 4 * h, h).t(), 0.0, &mut gates);
                for bi in 0..batch {
                    // Reverse direction starts at each sequence's own last element.
                    let t = if reverse { if step < lens[bi] { lens[bi] - 1 - step } else { continue } } else { t };
                    if t >= lens[bi] {
                        continue;
                    }
                    let g = &gates[bi * 4 * h..(bi + 1) * 4 * h];
                    let xg = &xw[(t * batch + bi) * 4 * h..(t * batch + bi + 1) * 4 * h];
                    for j in 0..h {
                        let pre = |k: usize| {
                            let v = xg[k * h + j] + g[k * h + j] + bias[k * h + j];
                            match self.clip {
                                Some(c) => v.clamp(-c, c),
                                None => v,
                            }
                        };
                        let c_prev = cs[bi * h + j];
                        let pi = peep.map_or(0.0, |p| p[j] * c_prev);
                        let pf = peep.map_or(0.0, |p| p[2 * h + j] * c_prev);
                        let i_g = sigmoid(pre(0) + pi);
                        let f_g = if self.input_forget { 1.0 - i_g } else { sigmoid(pre(2) + pf) };
                        let c_new = f_g * c_prev + i_g * pre(3).tanh();
                        let po = peep.map_or(0.0, |p| p[h + j] * c_new);
                        let o_g = sigmoid(pre(1) + po);
                        let h_new = o_g * c_new.tanh();
                        cs[bi * h + j] = c_new;
                        hs[bi * h + j] = h_new;
                        y[((t * d + di) * batch + bi) * h + j] = h_new;
                    }
                }
            }
            y_h[di * batch * h..(di + 1) * batch * h].copy_from_slice(&hs);
            y_c[di * batch * h..(di + 1) * batch * h].copy_from_slice(&cs);
        }
        Ok(vec![out(vec![seq, d, batch, h], y)?, out(vec![d, batch, h], y_h)?, out(vec![d, batch, h], y_c)?])
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn single_unit_lstm_by_hand() {
        // hidden 1, input 1, W = 1 for all gates, R = 0, no bias: each step is independent of
        // the last hidden state, only the cell carries over.
        let lstm = Lstm { hidden: 1, directions: vec![false], clip: None, input_forget: false };
        let y = run(&lstm, &[f32t(&[2, 1, 1], &[1., 2.]), f32t(&[1, 4, 1], &[1.; 4]), f32t(&[1, 4, 1], &[0.; 4])]).unwrap();
        let s = |v: f32| 1.0 / (1.0 + (-v).exp());
        let c1 = s(1.) * 1f32.tanh();
        let h1 = s(1.) * c1.tanh();
        let c2 = s(2.) * c1 + s(2.) * 2f32.tanh();
        let h2 = s(2.) * c2.tanh();
        assert_close(&y[0], &[2, 1, 1, 1], &[h1, h2]);
        assert_close(&y[1], &[1, 1, 1], &[h2]);
        assert_close(&y[2], &[1, 1, 1], &[c2]);
        // Reverse over the same input sees step 2 first.
        let rev = Lstm { hidden: 1, directions: vec![true], clip: None, input_forget: false };
        let y = run(&rev, &[f32t(&[2, 1, 1], &[2., 1.]), f32t(&[1, 4, 1], &[1.; 4]), f32t(&[1, 4, 1], &[0.; 4])]).unwrap();
        assert_close(&y[1], &[1, 1, 1], &[h2]);
    }
}
