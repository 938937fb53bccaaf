//! Model inputs for `run` and `bench`: read from .npz / .npy files, or synthesized from the
//! model's declared dtypes and shapes.

use anyhow::{Context, Result, bail, ensure};
use distq_runtime::graph::{Dim, ValueInfo};
use distq_runtime::{DataType, Tensor};

use distq_io::npz::{read_npy, read_npz};

/// Reads inputs given as `IN.npz` (arrays named like the inputs) or `NAME=FILE.npy`.
pub fn load(specs: &[String]) -> Result<Vec<(String, Tensor)>> {
    let mut inputs = Vec::new();
    for spec in specs {
        match spec.split_once('=') {
            Some((name, path)) => inputs.push((name.to_string(), read_npy(path.as_ref())?)),
            None if spec.ends_with(".npy") => bail!("{spec}: give .npy inputs as NAME={spec}"),
            None => inputs.extend(read_npz(spec.as_ref())?),
        }
    }
    Ok(inputs)
}

/// Parses `NAME=D0,D1,…` shape overrides.
pub fn parse_shape(spec: &str) -> Result<(String, Vec<usize>)> {
    let (name, dims) = spec.split_once('=').with_context(|| format!("--shape {spec}: expected NAME=D0,D1,…"))?;
    let dims = dims.split(',').map(|d| d.trim().parse::<usize>()).collect::<Result<Vec<_>, _>>();
    Ok((name.to_string(), dims.with_context(|| format!("--shape {spec}: dims must be non-negative integers"))?))
}

/// Inputs for every declared input of a model, seeded: floats uniform in [−1, 1); integers 0
/// or 1 (valid as token ids, attention masks and token types alike); booleans by the same
/// draw. Shapes are the declared ones; `shapes` entries name an input (its whole shape) or
/// a symbolic dim (`batch=1`, its size wherever it appears), and are required for dims the
/// model leaves open.
///
/// ```
/// use distq_converter::inputs::synthesize;
/// use distq_runtime::Model;
/// // Its input `x` has one symbolic dim, `d1`.
/// let model = Model::from_bytes(distq_runtime::testing::add_one_model())?;
/// assert!(synthesize(model.inputs(), &[], 7).is_err());
/// let inputs = synthesize(model.inputs(), &[("d1".into(), vec![3])], 7)?;
/// assert_eq!(inputs[0].1.shape(), &[3]);
/// let again = synthesize(model.inputs(), &[("x".into(), vec![3])], 7)?;
/// assert_eq!(again[0].1.as_slice::<f32>()?, inputs[0].1.as_slice::<f32>()?, "seeded");
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn synthesize(declared: &[ValueInfo], shapes: &[(String, Vec<usize>)], seed: u64) -> Result<Vec<(String, Tensor)>> {
    let symbols: std::collections::BTreeSet<&str> = declared
        .iter()
        .flat_map(|d| d.dims.iter().flatten())
        .filter_map(|dim| if let Dim::Symbolic(s) = dim { Some(s.as_str()) } else { None })
        .collect();
    for (name, dims) in shapes {
        let is_symbol = symbols.contains(&name.as_str()) && dims.len() == 1;
        ensure!(
            is_symbol || declared.iter().any(|d| &d.name == name),
            "--shape {name}=…: the model has no input '{name}' and no symbolic dim '{name}' (its symbolic dims: {})",
            if symbols.is_empty() { "none".to_string() } else { symbols.into_iter().collect::<Vec<_>>().join(", ") }
        );
    }
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut draw = move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    declared
        .iter()
        .map(|d| {
            let shape = match shapes.iter().find(|(n, _)| n == &d.name) {
                Some((_, s)) => s.clone(),
                None => fixed_shape(d, shapes)?,
            };
            let n: usize = shape.iter().product();
            let dtype = d.dtype.with_context(|| format!("input '{}' declares no dtype: give --input", d.name))?;
            let mut unit = || 2.0 * draw() - 1.0;
            let t = match dtype {
                DataType::F32 => Tensor::from_vec(shape, (0..n).map(|_| unit()).collect()),
                DataType::F64 => Tensor::from_vec(shape, (0..n).map(|_| unit() as f64).collect()),
                DataType::F16 => Tensor::from_vec(shape, (0..n).map(|_| half::f16::from_f32(unit()).to_bits()).collect()),
                DataType::I64 => Tensor::from_vec(shape, (0..n).map(|_| (unit() >= 0.0) as i64).collect()),
                DataType::I32 => Tensor::from_vec(shape, (0..n).map(|_| (unit() >= 0.0) as i32).collect()),
                DataType::I8 => Tensor::from_vec(shape, (0..n).map(|_| (unit() >= 0.0) as i8).collect()),
                DataType::U8 => Tensor::from_vec(shape, (0..n).map(|_| (unit() >= 0.0) as u8).collect()),
                DataType::Bool => Tensor::from_bools(shape, (0..n).map(|_| unit() >= 0.0).collect()),
                other => bail!("input '{}': cannot synthesize {other} values: give --input", d.name),
            };
            Ok((d.name.clone(), t?))
        })
        .collect()
}

/// The declared shape with symbolic dims bound by `shapes`; an error naming any dim left open.
fn fixed_shape(d: &ValueInfo, shapes: &[(String, Vec<usize>)]) -> Result<Vec<usize>> {
    let bound = |s: &str| shapes.iter().find(|(n, v)| n == s && v.len() == 1).map(|(_, v)| v[0]);
    let dims = d
        .dims
        .as_ref()
        .with_context(|| format!("input '{}' declares no shape: give --input IN.npz or --shape {}=D0,D1,…", d.name, d.name))?;
    let open: Vec<String> = dims
        .iter()
        .enumerate()
        .filter_map(|(i, dim)| match dim {
            Dim::Fixed(_) => None,
            Dim::Symbolic(s) if bound(s).is_some() => None,
            Dim::Symbolic(s) => Some(format!("dim {i} '{s}'")),
            Dim::Unknown => Some(format!("dim {i} (unnamed)")),
        })
        .collect();
    ensure!(
        open.is_empty(),
        "input '{}' has dims the model leaves open ({}): give --input IN.npz, --shape {}=D0,D1,… or --shape SYMBOL=N",
        d.name,
        open.join(", "),
        d.name
    );
    Ok(dims
        .iter()
        .map(|dim| match dim {
            Dim::Fixed(n) => *n,
            Dim::Symbolic(s) => bound(s).unwrap_or(0),
            Dim::Unknown => 0,
        })
        .collect())
}
