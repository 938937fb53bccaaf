//! Elementwise ops: unary math and activations, broadcasting binary arithmetic and
//! comparisons, variadic Min/Max/Sum, Where, and Cast.

use super::chain::ChainStep;
use super::{BufferPool, Fact, ImportCtx, Importer, Op, broadcast_shapes, broadcast_strides, expect_dtype, math, optional, out, required};
use crate::error::{Result, bail, ensure};
use crate::tensor::{Bool, DataType, Element, Tensor};
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

/// The ops of this family.
pub const OPS: &[(&str, Importer)] = &[
    ("Sqrt", |_| Ok(Box::new(Unary::Sqrt))),
    ("Erf", |_| Ok(Box::new(Unary::Erf))),
    ("Tanh", |_| Ok(Box::new(Unary::Tanh))),
    ("Sigmoid", |_| Ok(Box::new(Unary::Sigmoid))),
    ("Relu", |_| Ok(Box::new(Unary::Relu))),
    ("Exp", |_| Ok(Box::new(Unary::Exp))),
    ("Log", |_| Ok(Box::new(Unary::Log))),
    ("Neg", |_| Ok(Box::new(Unary::Neg))),
    ("Abs", |_| Ok(Box::new(Unary::Abs))),
    ("Floor", |_| Ok(Box::new(Unary::Floor))),
    ("Ceil", |_| Ok(Box::new(Unary::Ceil))),
    ("Reciprocal", |_| Ok(Box::new(Unary::Reciprocal))),
    ("Softplus", |_| Ok(Box::new(Unary::Softplus))),
    ("Mish", |_| Ok(Box::new(Unary::Mish))),
    ("Not", |_| Ok(Box::new(Unary::Not))),
    ("HardSwish", |_| Ok(Box::new(Unary::HardSwish))),
    ("HardSigmoid", |c| Ok(Box::new(Unary::HardSigmoid { alpha: c.attrs.float("alpha", 0.2)?, beta: c.attrs.float("beta", 0.5)? }))),
    ("LeakyRelu", |c| Ok(Box::new(Unary::LeakyRelu { alpha: c.attrs.float("alpha", 0.01)? }))),
    ("Cos", |_| Ok(Box::new(Unary::Cos))),
    ("Sin", |_| Ok(Box::new(Unary::Sin))),
    ("Tan", |_| Ok(Box::new(Unary::Tan))),
    ("Acos", |_| Ok(Box::new(Unary::Acos))),
    ("Asin", |_| Ok(Box::new(Unary::Asin))),
    ("Atan", |_| Ok(Box::new(Unary::Atan))),
    ("Cosh", |_| Ok(Box::new(Unary::Cosh))),
    ("Sinh", |_| Ok(Box::new(Unary::Sinh))),
    ("Acosh", |_| Ok(Box::new(Unary::Acosh))),
    ("Asinh", |_| Ok(Box::new(Unary::Asinh))),
    ("Atanh", |_| Ok(Box::new(Unary::Atanh))),
    ("Elu", |c| Ok(Box::new(Unary::Elu { alpha: c.attrs.float("alpha", 1.0)? }))),
    ("Celu", |c| Ok(Box::new(Unary::Celu { alpha: c.attrs.float("alpha", 1.0)? }))),
    ("Selu", |c| Ok(Box::new(Unary::Selu { alpha: c.attrs.float("alpha", 1.673_263_2)?, gamma: c.attrs.float("gamma", 1.050_701)? }))),
    ("ThresholdedRelu", |c| Ok(Box::new(Unary::ThresholdedRelu { alpha: c.attrs.float("alpha", 1.0)? }))),
    ("Shrink", |c| Ok(Box::new(Unary::Shrink { bias: c.attrs.float("bias", 0.0)?, lambd: c.attrs.float("lambd", 0.5)? }))),
    ("Swish", |c| Ok(Box::new(Unary::Swish { alpha: c.attrs.float("alpha", 1.0)? }))),
    ("Gelu", |c| match c.attrs.string("approximate", "none")?.as_str() {
        "none" => Ok(Box::new(Unary::Gelu)),
        "tanh" => Ok(Box::new(Unary::GeluTanh)),
        other => bail!("approximate '{other}' is neither 'none' nor 'tanh'"),
    }),
    ("Softsign", |_| Ok(Box::new(Unary::Softsign))),
    ("Round", |_| Ok(Box::new(Unary::Round))),
    ("Sign", |_| Ok(Box::new(Unary::Sign))),
    ("Clip", import_clip),
    ("Add", |_| Ok(Box::new(Binary::Add))),
    ("Sub", |_| Ok(Box::new(Binary::Sub))),
    ("Mul", |_| Ok(Box::new(Binary::Mul))),
    ("Div", |_| Ok(Box::new(Binary::Div))),
    ("Mod", |c| Ok(Box::new(Binary::Mod { fmod: c.attrs.int("fmod", 0)? != 0 }))),
    ("Pow", |_| Ok(Box::new(Binary::Pow))),
    ("PRelu", |_| Ok(Box::new(Binary::PRelu))),
    ("Equal", |_| Ok(Box::new(Binary::Equal))),
    ("Less", |_| Ok(Box::new(Binary::Less))),
    ("LessOrEqual", |_| Ok(Box::new(Binary::LessOrEqual))),
    ("Greater", |_| Ok(Box::new(Binary::Greater))),
    ("GreaterOrEqual", |_| Ok(Box::new(Binary::GreaterOrEqual))),
    ("And", |_| Ok(Box::new(Binary::And))),
    ("Or", |_| Ok(Box::new(Binary::Or))),
    ("Xor", |_| Ok(Box::new(Binary::Xor))),
    ("Min", |_| Ok(Box::new(Variadic(Binary::Min)))),
    ("Max", |_| Ok(Box::new(Variadic(Binary::Max)))),
    ("Sum", |_| Ok(Box::new(Variadic(Binary::Add)))),
    ("Mean", |_| Ok(Box::new(Mean))),
    ("Where", |_| Ok(Box::new(Where))),
    ("Cast", import_cast),
    ("CastLike", |_| Ok(Box::new(CastLike))),
];

/// Arithmetic over the numeric element types.
pub(crate) trait Num: Element + PartialOrd {
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Result<Self>;
    /// The remainder of `self / o`: with the divisor's sign when `floored` (integers only,
    /// Python's `%`), else with the dividend's (C's `fmod`). A zero integer divisor gives 0
    /// (callers refuse it first).
    fn rem(self, o: Self, floored: bool) -> Self;
    fn from_f64(v: f64) -> Self;
    fn to_i64(self) -> i64;
    fn from_i64(v: i64) -> Self;
    fn to_f64(self) -> f64;
    fn is_nan(self) -> bool;
    const IS_FLOAT: bool;
}

macro_rules! num_int {
    ($($t:ty),*) => {$(impl Num for $t {
        fn add(self, o: Self) -> Self { self.wrapping_add(o) }
        fn sub(self, o: Self) -> Self { self.wrapping_sub(o) }
        fn mul(self, o: Self) -> Self { self.wrapping_mul(o) }
        fn div(self, o: Self) -> Result<Self> {
            ensure!(o != 0, "integer division by zero");
            Ok(self.wrapping_div(o))
        }
        fn rem(self, o: Self, floored: bool) -> Self {
            // Through i64, where every value of these types fits with its sign.
            let (p, q) = (self as i64, o as i64);
            let r = p.checked_rem(q).unwrap_or(0);
            Self::from_i64(if floored && r != 0 && (r < 0) != (q < 0) { r + q } else { r })
        }
        fn from_f64(v: f64) -> Self { v as $t }
        fn to_i64(self) -> i64 { self as i64 }
        fn from_i64(v: i64) -> Self { v as $t }
        fn to_f64(self) -> f64 { self as f64 }
        fn is_nan(self) -> bool { false }
        const IS_FLOAT: bool = false;
    })*};
}
num_int!(i8, u8, i32, i64);

macro_rules! num_float {
    ($($t:ty),*) => {$(impl Num for $t {
        fn add(self, o: Self) -> Self { self + o }
        fn sub(self, o: Self) -> Self { self - o }
        fn mul(self, o: Self) -> Self { self * o }
        fn div(self, o: Self) -> Result<Self> { Ok(self / o) }
        fn rem(self, o: Self, _floored: bool) -> Self { self % o }
        fn from_f64(v: f64) -> Self { v as $t }
        fn to_i64(self) -> i64 { self as i64 }
        fn from_i64(v: i64) -> Self { v as $t }
        fn to_f64(self) -> f64 { self as f64 }
        fn is_nan(self) -> bool { <$t>::is_nan(self) }
        const IS_FLOAT: bool = true;
    })*};
}
num_float!(f32, f64);

/// Calls `$body` with `$x: &[T]` for numeric tensors (f32, f64, i8, u8, i32, i64).
macro_rules! with_numeric {
    ($t:expr, |$x:ident: &[$T:ident]| $body:expr) => {
        super::dispatch_dtype!($t, |$x: &[$T]| $body,
            [F32 => f32, F64 => f64, I64 => i64, I32 => i32, I8 => i8, U8 => u8],
            other => bail!("dtype {other} is not numeric"))
    };
}

const NUMERIC: &[DataType] = &[DataType::F32, DataType::F64, DataType::I64, DataType::I32, DataType::I8, DataType::U8];
const FLOAT: &[DataType] = &[DataType::F32, DataType::F64];

// ---- unary ----

/// Single-input elementwise ops; each variant is the ONNX op of the same name.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary {
    Sqrt,
    Erf,
    Tanh,
    Sigmoid,
    Relu,
    Exp,
    Log,
    Neg,
    Abs,
    Floor,
    Ceil,
    Reciprocal,
    Softplus,
    Mish,
    Not,
    HardSwish,
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    LeakyRelu {
        alpha: f32,
    },
    Elu {
        alpha: f32,
    },
    Celu {
        alpha: f32,
    },
    Selu {
        alpha: f32,
        gamma: f32,
    },
    ThresholdedRelu {
        alpha: f32,
    },
    Shrink {
        bias: f32,
        lambd: f32,
    },
    Swish {
        alpha: f32,
    },
    /// `x · Φ(x)` with the exact normal CDF.
    Gelu,
    /// GELU's tanh approximation.
    GeluTanh,
    Softsign,
    Round,
    Sign,
    Cos,
    Sin,
    Tan,
    Acos,
    Asin,
    Atan,
    Cosh,
    Sinh,
    Acosh,
    Asinh,
    Atanh,
}

impl Unary {
    /// Whether the op is defined on f32 (all but `Not`).
    pub(crate) fn takes_f32(self) -> bool {
        self != Unary::Not
    }

    /// Applies the op to f32 elements in place; one monomorphic loop per op so each
    /// vectorizes (inlined, so callers inside [`crate::simd::widest`] get wide vectors).
    #[inline(always)]
    pub(crate) fn apply_f32(self, v: &mut [f32]) {
        macro_rules! each {
            ($f:expr) => {{
                let f = $f;
                for a in v.iter_mut() {
                    *a = f(*a);
                }
            }};
        }
        match self {
            Unary::Sqrt => each!(f32::sqrt),
            Unary::Erf => each!(math::erf),
            Unary::Tanh => each!(math::tanh),
            Unary::Sigmoid => each!(math::sigmoid),
            Unary::Relu => each!(|a: f32| a.max(0.0)),
            Unary::Exp => each!(math::exp),
            Unary::Neg => each!(|a: f32| -a),
            Unary::Abs => each!(f32::abs),
            Unary::Floor => each!(f32::floor),
            Unary::Ceil => each!(f32::ceil),
            Unary::Reciprocal => each!(|a: f32| 1.0 / a),
            Unary::HardSwish => each!(|a: f32| a * (a / 6.0 + 0.5).clamp(0.0, 1.0)),
            Unary::HardSigmoid { alpha, beta } => each!(|a: f32| (alpha * a + beta).clamp(0.0, 1.0)),
            Unary::LeakyRelu { alpha } => each!(|a: f32| if a < 0.0 { alpha * a } else { a }),
            Unary::Log => each!(f32::ln),
            Unary::Softplus => each!(softplus),
            Unary::Mish => each!(|a: f32| a * math::tanh(softplus(a))),
            Unary::Cos => each!(f32::cos),
            Unary::Sin => each!(f32::sin),
            Unary::Tan => each!(f32::tan),
            Unary::Acos => each!(f32::acos),
            Unary::Asin => each!(f32::asin),
            Unary::Atan => each!(f32::atan),
            Unary::Cosh => each!(f32::cosh),
            Unary::Sinh => each!(f32::sinh),
            Unary::Acosh => each!(f32::acosh),
            Unary::Asinh => each!(f32::asinh),
            Unary::Atanh => each!(f32::atanh),
            Unary::Elu { alpha } => each!(|a: f32| if a < 0.0 { alpha * a.exp_m1() } else { a }),
            Unary::Celu { alpha } => each!(|a: f32| a.max(0.0) + (alpha * (a / alpha).exp_m1()).min(0.0)),
            Unary::Selu { alpha, gamma } => each!(|a: f32| gamma * if a <= 0.0 { alpha * a.exp_m1() } else { a }),
            Unary::ThresholdedRelu { alpha } => each!(|a: f32| if a > alpha { a } else { 0.0 }),
            Unary::Shrink { bias, lambd } => each!(|a: f32| if a < -lambd {
                a + bias
            } else if a > lambd {
                a - bias
            } else {
                0.0
            }),
            Unary::Swish { alpha } => each!(|a: f32| a * math::sigmoid(alpha * a)),
            Unary::Gelu => each!(|a: f32| 0.5 * a * (1.0 + math::erf(a * std::f32::consts::FRAC_1_SQRT_2))),
            Unary::GeluTanh => each!(|a: f32| 0.5 * a * (1.0 + math::tanh(0.797_884_6 * (a + 0.044_715 * a * a * a)))),
            Unary::Softsign => each!(|a: f32| a / (1.0 + a.abs())),
            Unary::Round => each!(f32::round_ties_even),
            Unary::Sign => each!(|a: f32| if a > 0.0 {
                1.0
            } else if a < 0.0 {
                -1.0
            } else {
                a
            }),
            Unary::Not => unreachable!("Not is boolean"),
        }
    }
}

/// `ln(1 + eˣ)`, through `ln_1p` so that a small result keeps its precision (x ≪ 0), and `x`
/// itself where `eˣ` would swamp the 1.
#[inline(always)]
fn softplus(x: f32) -> f32 {
    if x > 20.0 { x } else { x.exp().ln_1p() }
}

impl Op for Unary {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        match self {
            Unary::Not => expect_dtype(x, &[DataType::Bool], "input")?,
            Unary::Neg | Unary::Abs => expect_dtype(x, NUMERIC, "input")?,
            _ => expect_dtype(x, &[DataType::F32], "input")?,
        }
        Ok(vec![Fact::new(x.dtype, x.shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let x = required(inputs, 0)?;
        let shape = x.shape().to_vec();
        Ok(vec![match (self, x.dtype()) {
            (Unary::Not, _) => out(shape, x.as_slice::<Bool>()?.iter().map(|b| Bool(1 - b.0)).collect())?,
            (_, DataType::F32) => out(shape, super::chain::Chain::one(ChainStep::Unary(*self)).apply(x.as_slice::<f32>()?, pool))?,
            (Unary::Neg, _) => with_numeric!(x, |x: &[T]| out(shape, x.iter().map(|&a| T::from_i64(0).sub(a)).collect())?),
            (Unary::Abs, _) => with_numeric!(x, |x: &[T]| out(
                shape,
                x.iter().map(|&a| if a < T::from_i64(0) { T::from_i64(0).sub(a) } else { a }).collect()
            )?),
            (op, dt) => bail!("{op:?} does not support {dt}"),
        }])
    }
}

/// Clip with bounds from attributes (opset < 11) or optional scalar inputs.
#[derive(Debug)]
pub struct Clip {
    min: Option<f32>,
    max: Option<f32>,
}

impl Clip {
    /// The bounds from attributes (opset < 11; later opsets take them as inputs).
    pub(crate) fn attribute_bounds(&self) -> (Option<f32>, Option<f32>) {
        (self.min, self.max)
    }
}

/// Clamps `v` to `[lo, hi]` as Clip does (a NaN stays NaN); the bounds are matched once,
/// outside the loops, so that each loop vectorizes.
#[inline(always)]
pub(crate) fn clamp_in_place<T: PartialOrd + Copy>(v: &mut [T], lo: Option<T>, hi: Option<T>) {
    match (lo, hi) {
        // The lower bound first, then the upper: with min > max every value becomes max, as
        // the spec (numpy's clip) says.
        (Some(l), Some(h)) => {
            for a in v.iter_mut() {
                let raised = if *a < l { l } else { *a };
                *a = if raised > h { h } else { raised };
            }
        }
        (Some(l), None) => {
            for a in v.iter_mut() {
                *a = if *a < l { l } else { *a };
            }
        }
        (None, Some(h)) => {
            for a in v.iter_mut() {
                *a = if *a > h { h } else { *a };
            }
        }
        (None, None) => {}
    }
}

fn import_clip(c: &ImportCtx) -> Result<Box<dyn Op>> {
    if c.opset < 11 {
        Ok(Box::new(Clip { min: Some(c.attrs.float("min", f32::MIN)?), max: Some(c.attrs.float("max", f32::MAX)?) }))
    } else {
        Ok(Box::new(Clip { min: None, max: None }))
    }
}

impl Op for Clip {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        expect_dtype(x, NUMERIC, "input")?;
        for i in 1..3 {
            if let Some(b) = optional(inputs, i) {
                ensure!(b.dtype == x.dtype && b.shape.iter().product::<usize>() == 1, "bound {i} must be a scalar of the input's dtype");
            }
        }
        Ok(vec![Fact::new(x.dtype, x.shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let x = required(inputs, 0)?;
        let shape = x.shape().to_vec();
        with_numeric!(x, |x: &[T]| {
            let bound = |i: usize, attr: Option<f32>| -> Result<Option<T>> {
                Ok(match optional(inputs, i) {
                    Some(t) => Some(t.as_slice::<T>()?[0]),
                    None => attr.map(|a| T::from_f64(a as f64)),
                })
            };
            let (lo, hi) = (bound(1, self.min)?, bound(2, self.max)?);
            let mut v = pool.take(x.len());
            v.extend_from_slice(x);
            clamp_in_place(&mut v, lo, hi);
            Ok(vec![out(shape, v)?])
        })
    }
}

// ---- binary ----

/// Two-input broadcasting ops; each variant is the ONNX op of the same name.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Mod { fmod: bool },
    Pow,
    PRelu,
    Min,
    Max,
    Equal,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    And,
    Or,
    Xor,
}

impl Binary {
    fn output_dtype(self, a: DataType, b: DataType) -> Result<DataType> {
        use Binary::*;
        match self {
            And | Or | Xor => {
                ensure!(a == DataType::Bool && b == DataType::Bool, "{self:?} needs bool inputs, got {a} and {b}");
                Ok(DataType::Bool)
            }
            Pow => {
                ensure!(FLOAT.contains(&a) && NUMERIC.contains(&b), "Pow needs a float base and numeric exponent, got {a} and {b}");
                Ok(a)
            }
            Equal if a == DataType::Bool && b == DataType::Bool => Ok(DataType::Bool),
            Mod { fmod: false } if FLOAT.contains(&a) => bail!("Mod of {a} needs fmod = 1 (the spec's rule for floats)"),
            _ => {
                ensure!(a == b, "inputs have different dtypes: {a} and {b}");
                ensure!(NUMERIC.contains(&a), "{self:?} does not support {a}");
                Ok(if matches!(self, Equal | Less | LessOrEqual | Greater | GreaterOrEqual) { DataType::Bool } else { a })
            }
        }
    }

    /// Evaluates on two tensors with numpy broadcasting.
    pub(crate) fn apply(self, a: &Tensor, b: &Tensor, pool: &mut BufferPool) -> Result<Tensor> {
        use Binary::*;
        self.output_dtype(a.dtype(), b.dtype())?;
        let shape = broadcast_shapes(a.shape(), b.shape())?;
        if matches!(self, And | Or | Xor) || (self == Equal && a.dtype() == DataType::Bool) {
            let v = broadcast_zip(a.as_bools()?, a.shape(), b.as_bools()?, b.shape(), &shape, pool, |x: u8, y: u8| {
                Bool(match self {
                    And => x & y,
                    Or => x | y,
                    Xor => x ^ y,
                    _ => (x == y) as u8,
                })
            });
            return out(shape, v);
        }
        if self == Pow {
            let exps = b.to_f32s().or_else(|_| b.to_i64s().map(|v| v.into_iter().map(|e| e as f32).collect()))?;
            let exps = Tensor::from_vec(b.shape().to_vec(), exps)?;
            let v = broadcast_zip(a.as_slice::<f32>()?, a.shape(), exps.as_slice::<f32>()?, b.shape(), &shape, pool, |x: f32, e: f32| {
                if e == 2.0 { x * x } else { x.powf(e) }
            });
            return out(shape, v);
        }
        with_numeric!(a, |x: &[T]| {
            let y = b.as_slice::<T>()?;
            let mut cmp = |f: fn(&T, &T) -> bool| -> Result<Tensor> {
                out(shape.clone(), broadcast_zip(x, a.shape(), y, b.shape(), &shape, pool, |p: T, q: T| Bool(f(&p, &q) as u8)))
            };
            match self {
                Equal => cmp(|p, q| p == q),
                Less => cmp(|p, q| p < q),
                LessOrEqual => cmp(|p, q| p <= q),
                Greater => cmp(|p, q| p > q),
                GreaterOrEqual => cmp(|p, q| p >= q),
                Mod { fmod } => {
                    ensure!(T::IS_FLOAT || !y.contains(&T::from_i64(0)), "integer modulo by zero");
                    out(shape.clone(), broadcast_zip(x, a.shape(), y, b.shape(), &shape, pool, |p: T, q: T| p.rem(q, !fmod)))
                }
                Div if !T::IS_FLOAT => {
                    ensure!(!y.contains(&T::from_i64(0)), "integer division by zero");
                    out(shape.clone(), broadcast_zip(x, a.shape(), y, b.shape(), &shape, pool, |p: T, q: T| p.div(q).unwrap_or(p)))
                }
                // One monomorphic loop per op, so each vectorizes.
                Add => out(shape.clone(), broadcast_zip(x, a.shape(), y, b.shape(), &shape, pool, |p: T, q: T| p.add(q))),
                Sub => out(shape.clone(), broadcast_zip(x, a.shape(), y, b.shape(), &shape, pool, |p: T, q: T| p.sub(q))),
                Mul => out(shape.clone(), broadcast_zip(x, a.shape(), y, b.shape(), &shape, pool, |p: T, q: T| p.mul(q))),
                Div => out(shape.clone(), broadcast_zip(x, a.shape(), y, b.shape(), &shape, pool, |p: T, q: T| p.div(q).unwrap_or(p))),
                Min => out(
                    shape.clone(),
                    broadcast_zip(x, a.shape(), y, b.shape(), &shape, pool, |p: T, q: T| if q < p || q.is_nan() { q } else { p }),
                ),
                Max => out(
                    shape.clone(),
                    broadcast_zip(x, a.shape(), y, b.shape(), &shape, pool, |p: T, q: T| if q > p || q.is_nan() { q } else { p }),
                ),
                PRelu => out(
                    shape.clone(),
                    broadcast_zip(x, a.shape(), y, b.shape(), &shape, pool, |p: T, q: T| if p < T::from_i64(0) { p.mul(q) } else { p }),
                ),
                And | Or | Xor | Pow => unreachable!("handled above"),
            }
        })
    }
}

/// Applies `f` over two broadcast inputs; the innermost dim is a tight loop.
fn broadcast_zip<A: Copy, B: Copy, O: Element>(
    a: &[A],
    a_shape: &[usize],
    b: &[B],
    b_shape: &[usize],
    shape: &[usize],
    pool: &mut BufferPool,
    f: impl Fn(A, B) -> O,
) -> Vec<O> {
    let n: usize = shape.iter().product();
    let mut v = pool.take(n);
    if n == 0 {
        return v;
    }
    if a_shape == b_shape {
        v.extend(a.iter().zip(b).map(|(&x, &y)| f(x, y)));
        return v;
    }
    if b.len() == 1 {
        let y = b[0];
        v.extend(a.iter().map(|&x| f(x, y)));
        return v;
    }
    if a.len() == 1 {
        let x = a[0];
        v.extend(b.iter().map(|&y| f(x, y)));
        return v;
    }
    let (dims, sa, sb) = coalesce(shape, &broadcast_strides(a_shape, shape), &broadcast_strides(b_shape, shape));
    let rank = dims.len();
    let inner = dims[rank - 1];
    let (ia, ib) = (sa[rank - 1], sb[rank - 1]);
    let mut idx = vec![0usize; rank];
    let (mut oa, mut ob) = (0usize, 0usize);
    loop {
        match (ia, ib) {
            (1, 1) => v.extend(a[oa..oa + inner].iter().zip(&b[ob..ob + inner]).map(|(&x, &y)| f(x, y))),
            (1, 0) => v.extend(a[oa..oa + inner].iter().map(|&x| f(x, b[ob]))),
            (0, 1) => v.extend(b[ob..ob + inner].iter().map(|&y| f(a[oa], y))),
            _ => v.extend((0..inner).map(|j| f(a[oa + j * ia], b[ob + j * ib]))),
        }
        let mut d = rank - 1;
        loop {
            if d == 0 {
                return v;
            }
            d -= 1;
            idx[d] += 1;
            oa += sa[d];
            ob += sb[d];
            if idx[d] < dims[d] {
                break;
            }
            oa -= sa[d] * dims[d];
            ob -= sb[d] * dims[d];
            idx[d] = 0;
        }
    }
}

/// Merges adjacent dims that both inputs traverse contiguously, so inner loops get longer.
fn coalesce(shape: &[usize], sa: &[usize], sb: &[usize]) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let (mut dims, mut a, mut b) = (vec![shape[0]], vec![sa[0]], vec![sb[0]]);
    for i in 1..shape.len() {
        let last = dims.len() - 1;
        let mergeable = |s: &[usize], prev: usize| prev == s[i] * shape[i];
        if mergeable(sa, a[last]) && mergeable(sb, b[last]) {
            dims[last] *= shape[i];
            a[last] = sa[i];
            b[last] = sb[i];
        } else {
            dims.push(shape[i]);
            a.push(sa[i]);
            b.push(sb[i]);
        }
    }
    (dims, a, b)
}

impl Op for Binary {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (a, b) = (required(inputs, 0)?, required(inputs, 1)?);
        let dtype = self.output_dtype(a.dtype, b.dtype)?;
        let shape = broadcast_shapes(&a.shape, &b.shape)?;
        if *self == Binary::PRelu {
            ensure!(shape == a.shape, "PRelu slope {:?} does not broadcast to the input {:?}", b.shape, a.shape);
        }
        Ok(vec![Fact::new(dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        Ok(vec![self.apply(required(inputs, 0)?, required(inputs, 1)?, pool)?])
    }
}

/// Min, Max, Sum over any number of inputs, folded pairwise.
#[derive(Debug)]
pub struct Variadic(Binary);

impl Op for Variadic {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let first = required(inputs, 0)?;
        let mut fact = Fact::new(first.dtype, first.shape.clone());
        for i in 1..inputs.len() {
            fact = self.0.infer(&[Some(&fact), Some(required(inputs, i)?)])?.remove(0);
        }
        Ok(vec![fact])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let mut acc = required(inputs, 0)?.clone();
        for i in 1..inputs.len() {
            acc = self.0.apply(&acc, required(inputs, i)?, pool)?;
        }
        Ok(vec![acc])
    }
}

/// `Mean(x₁, …, xₙ)`: the broadcast sum divided by `n`.
#[derive(Debug)]
pub struct Mean;

impl Op for Mean {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let sum = Variadic(Binary::Add).infer(inputs)?;
        expect_dtype(&sum[0], FLOAT, "inputs")?;
        Ok(sum)
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let sum = Variadic(Binary::Add).eval(inputs, pool)?.remove(0);
        let n = inputs.len() as f64;
        let count = match sum.dtype() {
            DataType::F64 => Tensor::scalar(n),
            _ => Tensor::scalar(n as f32),
        };
        Ok(vec![Binary::Div.apply(&sum, &count, pool)?])
    }
}

/// `Where(cond, x, y)` with three-way broadcasting.
#[derive(Debug)]
pub struct Where;

impl Op for Where {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (c, x, y) = (required(inputs, 0)?, required(inputs, 1)?, required(inputs, 2)?);
        expect_dtype(c, &[DataType::Bool], "condition")?;
        ensure!(x.dtype == y.dtype, "branches have different dtypes: {} and {}", x.dtype, y.dtype);
        let shape = broadcast_shapes(&broadcast_shapes(&c.shape, &x.shape)?, &y.shape)?;
        Ok(vec![Fact::new(x.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let (c, x, y) = (required(inputs, 0)?, required(inputs, 1)?, required(inputs, 2)?);
        let shape = broadcast_shapes(&broadcast_shapes(c.shape(), x.shape())?, y.shape())?;
        // Select in two broadcast passes: first pick x where cond (else a placeholder), then y.
        let xs = super::array::broadcast_to(x, &shape)?;
        let ys = super::array::broadcast_to(y, &shape)?;
        let cs = super::array::broadcast_to(c, &shape)?;
        let cond = cs.as_bools()?;
        super::with_elements!(&xs, |xv: &[T]| {
            let yv = ys.as_slice::<T>()?;
            let mut v = pool.take(cond.len());
            v.extend(cond.iter().zip(xv.iter().zip(yv)).map(|(&c, (&a, &b))| if c != 0 { a } else { b }));
            Ok(vec![out(shape, v)?])
        })
    }
}

// ---- cast ----

/// `Cast(to)`.
#[derive(Debug)]
pub struct Cast {
    to: DataType,
}

fn import_cast(c: &ImportCtx) -> Result<Box<dyn Op>> {
    let code = c.attrs.int("to", 0)? as i32;
    match DataType::from_onnx(code) {
        Some(to) if !to.is_four_bit() => Ok(Box::new(Cast { to })),
        _ => Err(super::unsupported_attr(format!("Cast to {}", crate::tensor::onnx_dtype_name(code)))),
    }
}

/// Converts elements between numeric types: through i64 between integers (exact), through
/// f64 when either side is a float (float → int truncates toward zero and saturates, like
/// onnxruntime).
fn convert<S: Num, D: Num>(v: &[S]) -> Vec<D> {
    if S::IS_FLOAT || D::IS_FLOAT {
        v.iter().map(|&e| D::from_f64(e.to_f64())).collect()
    } else {
        v.iter().map(|&e| D::from_i64(e.to_i64())).collect()
    }
}

/// Converts a tensor to another dtype.
pub fn cast(x: &Tensor, to: DataType) -> Result<Tensor> {
    if x.dtype() == to {
        return Ok(x.clone());
    }
    let x = &x.widened()?;
    let shape = x.shape().to_vec();
    // Bool and f16 go through f32 (f16 with F16C / NEON conversions where the CPU has
    // them); every numeric pair converts directly.
    let as_f32 = match x.dtype() {
        DataType::Bool => Some(x.as_bools()?.iter().map(|&b| b as f32).collect::<Vec<f32>>()),
        DataType::F16 => {
            let bits = x.as_slice::<u16>()?;
            let mut v = vec![0f32; bits.len()];
            bits.reinterpret_cast::<half::f16>().convert_to_f32_slice(&mut v);
            Some(v)
        }
        _ => None,
    };
    let src = match as_f32 {
        Some(v) if to == DataType::F32 => return out(shape, v),
        Some(v) => Tensor::from_vec(shape.clone(), v)?,
        None => x.clone(),
    };
    with_numeric!(&src, |v: &[S]| match to {
        DataType::F32 => out(shape, convert::<S, f32>(v)),
        DataType::F64 => out(shape, convert::<S, f64>(v)),
        DataType::I64 => out(shape, convert::<S, i64>(v)),
        DataType::I32 => out(shape, convert::<S, i32>(v)),
        DataType::I8 => out(shape, convert::<S, i8>(v)),
        DataType::U8 => out(shape, convert::<S, u8>(v)),
        DataType::F16 => {
            let mut bits = vec![0u16; v.len()];
            bits.reinterpret_cast_mut::<half::f16>().convert_from_f32_slice(&convert::<S, f32>(v));
            out(shape, bits)
        }
        DataType::Bool => Tensor::from_bools(shape, v.iter().map(|&e| e.to_f64() != 0.0).collect()),
        DataType::U4 | DataType::I4 => Err(crate::error::Error::Op(format!("casts to {to} are not supported"))),
    })
}

impl Op for Cast {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        Ok(vec![Fact::new(self.to, x.shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        Ok(vec![cast(required(inputs, 0)?, self.to)?])
    }
}

/// `CastLike(input, target)`: [`Cast`] to the target's dtype (its values are not read).
#[derive(Debug)]
pub struct CastLike;

impl Op for CastLike {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (x, target) = (required(inputs, 0)?, required(inputs, 1)?);
        ensure!(!target.dtype.is_four_bit(), "cast to {} is not supported", target.dtype);
        Ok(vec![Fact::new(target.dtype, x.shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        Ok(vec![cast(required(inputs, 0)?, required(inputs, 1)?.dtype())?])
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn unary_cases() {
        let x = f32t(&[4], &[-2.0, -0.5, 0.0, 3.0]);
        let cases: &[(Unary, [f32; 4])] = &[
            (Unary::Relu, [0.0, 0.0, 0.0, 3.0]),
            (Unary::Neg, [2.0, 0.5, 0.0, -3.0]),
            (Unary::Abs, [2.0, 0.5, 0.0, 3.0]),
            (Unary::HardSwish, [-2.0 * (1.0 / 6.0), -0.5 * (0.5 - 0.5 / 6.0), 0.0, 3.0]),
            (Unary::HardSigmoid { alpha: 0.2, beta: 0.5 }, [0.1, 0.4, 0.5, 1.0]),
            (Unary::LeakyRelu { alpha: 0.1 }, [-0.2, -0.05, 0.0, 3.0]),
            (Unary::Sigmoid, [0.119_202_92, 0.377_540_67, 0.5, 0.952_574_13]),
            (Unary::Erf, [-0.995_322_3, -0.520_499_9, 0.0, 0.999_977_9]),
            (Unary::Tanh, [-0.964_027_6, -0.462_117_16, 0.0, 0.995_054_8]),
            (Unary::Floor, [-2.0, -1.0, 0.0, 3.0]),
            // x · tanh(ln(1 + eˣ)).
            (Unary::Mish, [-0.252_501_5, -0.220_743_77, 0.0, 2.986_535]),
        ];
        for (op, expected) in cases {
            let y = run(op, std::slice::from_ref(&x)).unwrap();
            assert_close(&y[0], &[4], expected);
        }
    }

    #[test]
    fn binary_broadcasting() {
        let a = f32t(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let b = f32t(&[3], &[10., 20., 30.]);
        let col = f32t(&[2, 1], &[100., 200.]);
        assert_close(&run(&Binary::Add, &[a.clone(), b.clone()]).unwrap()[0], &[2, 3], &[11., 22., 33., 14., 25., 36.]);
        assert_close(&run(&Binary::Sub, &[a.clone(), col.clone()]).unwrap()[0], &[2, 3], &[-99., -98., -97., -196., -195., -194.]);
        assert_close(&run(&Binary::Mul, &[col.clone(), b.clone()]).unwrap()[0], &[2, 3], &[1000., 2000., 3000., 2000., 4000., 6000.]);
        assert_close(&run(&Binary::Div, &[a.clone(), f32t(&[], &[2.])]).unwrap()[0], &[2, 3], &[0.5, 1., 1.5, 2., 2.5, 3.]);
        assert_close(&run(&Binary::Pow, &[a.clone(), f32t(&[], &[2.])]).unwrap()[0], &[2, 3], &[1., 4., 9., 16., 25., 36.]);
        // Mod: the divisor's sign (Python's %), or the dividend's with fmod (C's fmod).
        let (p, q) = (Tensor::from_vec(vec![4], vec![-4i32, 7, 5, -8]).unwrap(), Tensor::from_vec(vec![4], vec![3i32, -3, 2, 4]).unwrap());
        let floored = run(&Binary::Mod { fmod: false }, &[Some(p.clone()), Some(q.clone())]).unwrap();
        assert_eq!(floored[0].as_slice::<i32>().unwrap(), [2, -2, 1, 0]);
        let truncated = run(&Binary::Mod { fmod: true }, &[Some(p), Some(q)]).unwrap();
        assert_eq!(truncated[0].as_slice::<i32>().unwrap(), [-1, 1, 1, 0]);
        let y = run(&Binary::Mod { fmod: true }, &[f32t(&[2], &[-4.5, 7.5]), f32t(&[], &[2.])]).unwrap();
        assert_close(&y[0], &[2], &[-0.5, 1.5]);
        assert!(run(&Binary::Mod { fmod: false }, &[f32t(&[1], &[1.]), f32t(&[1], &[2.])]).is_err(), "floats need fmod");
        let zero = Some(Tensor::from_vec(vec![1], vec![0i64]).unwrap());
        let err = run(&Binary::Mod { fmod: false }, &[Some(Tensor::from_vec(vec![1], vec![5i64]).unwrap()), zero]).unwrap_err();
        assert!(err.to_string().contains("modulo by zero"), "{err}");
        let slope = f32t(&[3], &[0.5, 1., 2.]);
        assert_close(
            &run(&Binary::PRelu, &[f32t(&[2, 3], &[-1., -1., -1., 1., 1., 1.]), slope]).unwrap()[0],
            &[2, 3],
            &[-0.5, -1., -2., 1., 1., 1.],
        );
        let err = run(&Binary::Add, &[a, f32t(&[2], &[1., 2.])]).unwrap_err().to_string();
        assert!(err.contains("cannot be broadcast"), "{err}");
    }

    #[test]
    fn broadcast_middle_dims() {
        // [2,1,3] * [1,2,1] exercises the general strided path.
        let a = f32t(&[2, 1, 3], &[1., 2., 3., 4., 5., 6.]);
        let b = f32t(&[1, 2, 1], &[1., 10.]);
        assert_close(&run(&Binary::Mul, &[a, b]).unwrap()[0], &[2, 2, 3], &[1., 2., 3., 10., 20., 30., 4., 5., 6., 40., 50., 60.]);
    }

    #[test]
    fn integer_arithmetic_and_comparisons() {
        let a = i64t(&[3], &[7, -7, 9]);
        let b = i64t(&[3], &[2, 2, 3]);
        assert_eq!(run(&Binary::Div, &[a.clone(), b.clone()]).unwrap()[0].as_slice::<i64>().unwrap(), &[3, -3, 3]);
        let eq = run(&Binary::Equal, &[a.clone(), i64t(&[], &[9])]).unwrap();
        assert_eq!(eq[0].as_bools().unwrap(), &[0, 0, 1]);
        let ge = run(&Binary::GreaterOrEqual, &[a.clone(), b.clone()]).unwrap();
        assert_eq!(ge[0].as_bools().unwrap(), &[1, 0, 1]);
        let err = run(&Binary::Div, &[a.clone(), i64t(&[], &[0])]).unwrap_err().to_string();
        assert!(err.contains("division by zero"), "{err}");
        let err = run(&Binary::Add, &[a, f32t(&[3], &[1., 2., 3.])]).unwrap_err().to_string();
        assert!(err.contains("different dtypes"), "{err}");
    }

    #[test]
    fn where_min_max_clip() {
        let c = Some(Tensor::from_bools(vec![2], vec![true, false]).unwrap());
        let y = run(&Where, &[c, f32t(&[2, 2], &[1., 2., 3., 4.]), f32t(&[], &[-1.])]).unwrap();
        assert_close(&y[0], &[2, 2], &[1., -1., 3., -1.]);
        let m = run(&Variadic(Binary::Max), &[f32t(&[3], &[1., 5., 2.]), f32t(&[3], &[4., 0., 2.]), f32t(&[], &[3.])]).unwrap();
        assert_close(&m[0], &[3], &[4., 5., 3.]);
        let clip = Clip { min: None, max: None };
        let y = run(&clip, &[f32t(&[3], &[-5., 0.5, 9.]), f32t(&[], &[0.]), f32t(&[], &[6.])]).unwrap();
        assert_close(&y[0], &[3], &[0., 0.5, 6.]);
        let y = run(&Clip { min: Some(-1.0), max: Some(1.0) }, &[f32t(&[2], &[-3., 3.])]).unwrap();
        assert_close(&y[0], &[2], &[-1., 1.]);
        // min > max: every value becomes max (ONNX's test_clip_min_greater_than_max).
        let y = run(&clip, &[f32t(&[3], &[-5., 1.5, 9.]), f32t(&[], &[2.]), f32t(&[], &[1.])]).unwrap();
        assert_close(&y[0], &[3], &[1., 1., 1.]);
        let ints = Tensor::from_vec(vec![3], vec![-5i32, 1, 9]).unwrap();
        let bound = |v: i32| Some(Tensor::scalar(v));
        let y = run(&clip, &[Some(ints), bound(2), bound(1)]).unwrap();
        assert_eq!(y[0].as_slice::<i32>().unwrap(), [1, 1, 1]);
    }

    /// Mish near −10, where tanh's argument is about 5e-5: ONNX's test_mish_expanded
    /// (Softplus → Tanh → Mul) came out 1e-3 off in relative terms while tanh lost precision
    /// on small arguments.
    #[test]
    fn mish_keeps_relative_precision_of_small_values() {
        let xs: Vec<f32> = (0..200).map(|i| -12.0 + i as f32 * 0.05).collect();
        let y = run(&Unary::Mish, &[f32t(&[xs.len()], &xs)]).unwrap().remove(0);
        for (&x, &got) in xs.iter().zip(y.as_slice::<f32>().unwrap()) {
            let x = x as f64;
            let want = x * (x.exp().ln_1p()).tanh();
            assert!(((got as f64 - want) / want).abs() < 1e-5, "mish({x}) = {got}, want {want}");
        }
    }

    #[test]
    fn cast_like_takes_the_target_dtype() {
        let x = Tensor::from_vec(vec![3], vec![-1.7f32, 0.0, 2.9]).unwrap();
        let target = Tensor::from_vec(vec![1], vec![7i64]).unwrap();
        let y = run(&CastLike, &[Some(x), Some(target)]).unwrap();
        assert_eq!(y[0].as_slice::<i64>().unwrap(), [-1, 0, 2]);
    }

    #[test]
    fn cast_between_types() {
        let x = Tensor::from_vec(vec![4], vec![-1.7f32, 0.0, 2.9, 300.0]).unwrap();
        assert_eq!(cast(&x, DataType::I64).unwrap().as_slice::<i64>().unwrap(), &[-1, 0, 2, 300]);
        assert_eq!(cast(&x, DataType::Bool).unwrap().as_bools().unwrap(), &[1, 0, 1, 1]);
        let big = Tensor::from_vec(vec![1], vec![(1i64 << 60) + 1]).unwrap();
        assert_eq!(cast(&big, DataType::I32).unwrap().as_slice::<i32>().unwrap(), &[1]);
        let h = cast(&x, DataType::F16).unwrap();
        let back = cast(&h, DataType::F32).unwrap();
        assert_close(&back, &[4], &[-1.7001953, 0.0, 2.9003906, 300.0]);
    }

    /// float16 → float32 (F16C / NEON where present) against the format's definition, for
    /// every bit pattern: subnormals, infinities and NaNs included; and back, exactly.
    #[test]
    fn float16_converts_exactly() {
        let definition = |b: u16| -> f32 {
            let sign = if b >> 15 == 1 { -1.0 } else { 1.0 };
            let (exponent, mantissa) = ((b >> 10) & 31, (b & 1023) as f32);
            match exponent {
                0 => sign * mantissa * 2f32.powi(-24),
                31 if mantissa == 0.0 => sign * f32::INFINITY,
                31 => f32::NAN,
                e => sign * (1.0 + mantissa / 1024.0) * 2f32.powi(e as i32 - 15),
            }
        };
        let bits: Vec<u16> = (0..=u16::MAX).collect();
        let h = Tensor::from_vec(vec![bits.len()], bits.clone()).unwrap();
        let f = cast(&h, DataType::F32).unwrap();
        for (&b, &v) in bits.iter().zip(f.as_slice::<f32>().unwrap()) {
            let want = definition(b);
            assert!(v.to_bits() == want.to_bits() || (v.is_nan() && want.is_nan()), "{b:#06x}: {v} vs {want}");
        }
        let back = cast(&f, DataType::F16).unwrap();
        for (&b, &r) in bits.iter().zip(back.as_slice::<u16>().unwrap()) {
            assert!(r == b || (definition(b).is_nan() && definition(r).is_nan()), "{b:#06x} came back as {r:#06x}");
        }
    }
}
