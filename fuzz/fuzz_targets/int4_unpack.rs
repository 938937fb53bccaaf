//! The quantized-weight unpackers: 4-bit nibbles, INT4/UINT4 initializers feeding
//! DequantizeLinear (per tensor, per axis, blocked), and com.microsoft MatMulNBits blobs,
//! with lengths, dims, bit widths, block sizes and parameter dtypes all chosen by the input.
//! Where the result is defined, it is checked against a direct evaluation.
#![no_main]

use distq_fuzz::Bytes;
use distq_runtime::nibbles::{pack_u4, unpack_i4, unpack_u4};
use distq_runtime::onnx::proto::{OperatorSetIdProto, TensorProto};
use distq_runtime::testing::{Attr, ModelBuilder};
use distq_runtime::{DataType, Model, Session, Tensor};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let mut bytes = Bytes(data);
    match bytes.byte() % 3 {
        0 => nibbles(&mut bytes),
        1 => dequantize_linear(&mut bytes),
        _ => matmul_nbits(&mut bytes),
    }
});

fn nibbles(bytes: &mut Bytes) {
    let n = bytes.u16() as usize;
    let packed = bytes.0;
    let Ok(values) = unpack_u4(packed, n) else {
        assert_ne!(packed.len(), n.div_ceil(2));
        return;
    };
    assert_eq!(values.len(), n);
    let mut repacked = packed.to_vec();
    if n % 2 == 1 {
        // The unused high nibble of an odd count is dropped on the way in.
        *repacked.last_mut().unwrap() &= 0x0f;
    }
    assert_eq!(pack_u4(&values), repacked);
    let signed = unpack_i4(packed, n).unwrap();
    assert!(signed.iter().zip(&values).all(|(&s, &u)| (-8..=7).contains(&s) && (s as u8 & 0x0f) == u));
}

/// A raw tensor proto whose data length need not match its dims.
fn raw(name: &str, code: i32, dims: Vec<i64>, data: &[u8]) -> TensorProto {
    TensorProto { name: Some(name.into()), dims, data_type: Some(code), raw_data: Some(data.to_vec().into()), ..Default::default() }
}

fn dims(bytes: &mut Bytes) -> Vec<i64> {
    (0..bytes.byte() % 3 + 1).map(|_| (bytes.byte() % 17) as i64).collect()
}

fn dequantize_linear(bytes: &mut Bytes) {
    let signed = bytes.byte().is_multiple_of(2);
    let (code, zero_code) = if signed { (22, 22) } else { (21, 21) };
    let q_dims = dims(bytes);
    let q_len = bytes.byte() as usize;
    let q_data = bytes.take(q_len).to_vec();
    let mode = bytes.byte();
    let scale_dims = if mode.is_multiple_of(2) { vec![] } else { dims(bytes) };
    let scales: Vec<f32> = bytes.take(64).iter().map(|&b| b as f32 / 16.0).collect();
    let numel: usize = scale_dims.iter().map(|&d| d as usize).product();
    let scale_data: Vec<u8> = scales.iter().cycle().take(numel).flat_map(|s| s.to_le_bytes()).collect();
    // Mostly the right dtype for the scale and zero point, sometimes a wrong one.
    let scale_code = if mode & 4 == 0 { 1 } else { 7 };
    let zero_code = if mode & 8 == 0 { zero_code } else { 2 };
    let zero_data = bytes.take(numel.div_ceil(2)).to_vec();
    let mut attrs = Vec::new();
    if mode & 16 != 0 {
        attrs.push(("axis", Attr::Int((bytes.byte() % 4) as i64 - 1)));
    }
    if mode & 32 != 0 {
        attrs.push(("block_size", Attr::Int(bytes.byte() as i64 % 9 - 1)));
    }
    let with_zero = mode & 64 != 0;
    let mut builder = ModelBuilder::new(21).initializer_proto(raw("q", code, q_dims.clone(), &q_data)).initializer_proto(raw(
        "scale",
        scale_code,
        scale_dims.clone(),
        &scale_data,
    ));
    if with_zero {
        builder = builder.initializer_proto(raw("zero", zero_code, scale_dims.clone(), &zero_data));
    }
    let inputs: &[&str] = if with_zero { &["q", "scale", "zero"] } else { &["q", "scale"] };
    let model = builder.node("DequantizeLinear", inputs, &["y"], attrs).output("y", DataType::F32, &q_dims).to_bytes();
    let Ok(session) = Model::from_bytes(model).map(Session::new) else { return };
    let Ok(outputs) = session.run(Vec::<(&str, Tensor)>::new()) else { return };
    let y = outputs[0].1.as_slice::<f32>().unwrap();
    let n: usize = q_dims.iter().map(|&d| d as usize).product();
    assert_eq!(y.len(), n);
    if scale_dims.is_empty() && scale_code == 1 && (!with_zero || zero_code != 2) {
        // Per tensor: y = (q − zero) · scale, element by element.
        let q: Vec<i32> = if signed {
            unpack_i4(&q_data, n).unwrap().into_iter().map(i32::from).collect()
        } else {
            unpack_u4(&q_data, n).unwrap().into_iter().map(i32::from).collect()
        };
        let zero = if !with_zero {
            0
        } else if signed {
            unpack_i4(&zero_data, 1).unwrap()[0] as i32
        } else {
            unpack_u4(&zero_data, 1).unwrap()[0] as i32
        };
        for (i, (&y, &q)) in y.iter().zip(&q).enumerate() {
            assert_eq!(y, (q - zero) as f32 * scales[0], "element {i}");
        }
    }
}

fn matmul_nbits(bytes: &mut Bytes) {
    let k = (bytes.byte() % 80) as usize + 1;
    let n = (bytes.byte() % 12) as usize + 1;
    let bits = [4usize, 8, 2, 3][(bytes.byte() % 4) as usize];
    let block = [16usize, 32, 64, 128, 8, 0][(bytes.byte() % 6) as usize];
    let mode = bytes.byte();
    let blocks = k.div_ceil(block.max(1));
    let blob = block * bits / 8;
    let want = n * blocks * blob;
    // Mostly the right length; sometimes a wrong one.
    let len = if mode & 1 == 0 { want } else { bytes.byte() as usize };
    let packed: Vec<u8> = (0..len).map(|_| bytes.byte()).collect();
    let scales: Vec<f32> = (0..n * blocks).map(|_| (bytes.byte() % 32) as f32 / 8.0).collect();
    let with_zero = mode & 2 != 0;
    let zero_len = if bits == 4 { n * blocks.div_ceil(2) } else { n * blocks };
    let zeros: Vec<u8> = (0..zero_len).map(|_| bytes.byte()).collect();
    let mut builder = ModelBuilder::new(21)
        .input("a", DataType::F32, &[1, k as i64])
        .initializer_proto(raw("b", 2, vec![n as i64, blocks as i64, blob as i64], &packed))
        .initializer("scales", &Tensor::from_vec(vec![n * blocks], scales.clone()).unwrap());
    if with_zero {
        builder = builder.initializer("zeros", &Tensor::from_vec(vec![zeros.len()], zeros.clone()).unwrap());
    }
    let inputs: &[&str] = if with_zero { &["a", "b", "scales", "zeros"] } else { &["a", "b", "scales"] };
    let attrs = vec![
        ("K", Attr::Int(k as i64)),
        ("N", Attr::Int(n as i64)),
        ("bits", Attr::Int(bits as i64)),
        ("block_size", Attr::Int(block as i64)),
        ("accuracy_level", Attr::Int(if mode & 4 != 0 { 4 } else { 0 })),
    ];
    let mut model = builder.node("MatMulNBits", inputs, &["y"], attrs).output("y", DataType::F32, &[1, n as i64]).build();
    model.opset_import.push(OperatorSetIdProto { domain: Some("com.microsoft".into()), version: Some(1) });
    model.graph.as_mut().unwrap().node[0].domain = Some("com.microsoft".into());
    let Ok(session) = Model::from_bytes(model.encode_to_vec()).map(Session::new) else { return };
    let a: Vec<f32> = (0..k).map(|p| (p % 5) as f32 - 2.0).collect();
    let Ok(outputs) = session.run(vec![("a", Tensor::from_vec(vec![1, k], a.clone()).unwrap())]) else { return };
    let y = outputs[0].1.as_slice::<f32>().unwrap();
    assert_eq!(y.len(), n);
    if mode & 4 != 0 {
        return; // int8 activations: close to the reference, not equal; the unit tests bound it.
    }
    // Reference: w[j][p] = (q − zero) · scale of p's block.
    for (j, &y) in y.iter().enumerate() {
        let mut sum = 0f64;
        for (p, &a) in a.iter().enumerate() {
            let (blk, within) = (p / block, p % block);
            let byte = packed[(j * blocks + blk) * blob + within * bits / 8];
            let q = if bits == 8 { byte } else { (byte >> (4 * (within % 2))) & 15 };
            let zero = if !with_zero {
                if bits == 8 { 128 } else { 8 }
            } else if bits == 8 {
                zeros[j * blocks + blk]
            } else {
                let i = j * blocks.div_ceil(2) + blk / 2;
                (zeros[i] >> (4 * (blk % 2))) & 15
            };
            sum += a as f64 * ((q as f64 - zero as f64) * scales[j * blocks + blk] as f64);
        }
        assert!((y as f64 - sum).abs() <= 1e-3 * (1.0 + sum.abs()), "row {j}: {y} vs {sum}");
    }
}
