//! Freshly initialized models for `distq train`: the demo's image classifier.

use super::data::normal_values;
use anyhow::Result;
use distq_runtime::onnx::proto::ModelProto;
use distq_runtime::testing::{Attr, ModelBuilder};
use distq_runtime::{DataType, Tensor};

/// Widths of the small CNN.
#[derive(Clone, Copy, Debug)]
pub struct CnnWidths {
    /// Channels of the first 3×3 convolution.
    pub conv1: usize,
    /// Channels of the second.
    pub conv2: usize,
    /// Units of the hidden dense layer.
    pub hidden: usize,
}

/// A CNN for 28×28 grayscale images in 10 classes, He-initialized from `seed`:
/// `image (uint8 [N,1,28,28]) → /255 → conv3×3 → ReLU → maxpool2 → conv3×3 → ReLU →
/// maxpool2 → flatten → dense → ReLU → dense → logits [N,10]`. Taking uint8 keeps the
/// bundled data small and the model self-contained (the scaling is in the graph).
///
/// ```
/// use distq_converter::distill::zoo::{CnnWidths, image_cnn};
/// let model = image_cnn(CnnWidths { conv1: 4, conv2: 8, hidden: 16 }, 7)?;
/// assert_eq!(model.graph.unwrap().output[0].name.as_deref(), Some("logits"));
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn image_cnn(w: CnnWidths, seed: u64) -> Result<ModelProto> {
    let he = |shape: Vec<usize>, fan_in: usize, salt: u64| -> Result<Tensor> {
        let n = shape.iter().product();
        Ok(Tensor::from_vec(shape, normal_values(n, (2.0 / fan_in as f32).sqrt(), seed.wrapping_mul(31).wrapping_add(salt)))?)
    };
    let zeros = |n: usize| Tensor::from_vec(vec![n], vec![0f32; n]);
    let flat = w.conv2 * 7 * 7;
    let conv = |pads| vec![("kernel_shape", Attr::Ints(vec![3, 3])), ("pads", Attr::Ints(pads))];
    let pool = || vec![("kernel_shape", Attr::Ints(vec![2, 2])), ("strides", Attr::Ints(vec![2, 2]))];
    Ok(ModelBuilder::new(17)
        .input("image", DataType::U8, &[-1, 1, 28, 28])
        .initializer("scale", &Tensor::scalar(1.0f32 / 255.0))
        .initializer("conv1.weight", &he(vec![w.conv1, 1, 3, 3], 9, 1)?)
        .initializer("conv1.bias", &zeros(w.conv1)?)
        .initializer("conv2.weight", &he(vec![w.conv2, w.conv1, 3, 3], 9 * w.conv1, 2)?)
        .initializer("conv2.bias", &zeros(w.conv2)?)
        .initializer("fc1.weight", &he(vec![w.hidden, flat], flat, 3)?)
        .initializer("fc1.bias", &zeros(w.hidden)?)
        .initializer("fc2.weight", &he(vec![10, w.hidden], w.hidden, 4)?)
        .initializer("fc2.bias", &zeros(10)?)
        .node("Cast", &["image"], &["pixels"], vec![("to", Attr::Int(1))])
        .node("Mul", &["pixels", "scale"], &["x"], vec![])
        .node("Conv", &["x", "conv1.weight", "conv1.bias"], &["c1"], conv(vec![1, 1, 1, 1]))
        .node("Relu", &["c1"], &["r1"], vec![])
        .node("MaxPool", &["r1"], &["p1"], pool())
        .node("Conv", &["p1", "conv2.weight", "conv2.bias"], &["c2"], conv(vec![1, 1, 1, 1]))
        .node("Relu", &["c2"], &["r2"], vec![])
        .node("MaxPool", &["r2"], &["p2"], pool())
        .node("Flatten", &["p2"], &["f"], vec![("axis", Attr::Int(1))])
        .node("Gemm", &["f", "fc1.weight", "fc1.bias"], &["h"], vec![("transB", Attr::Int(1))])
        .node("Relu", &["h"], &["hr"], vec![])
        .node("Gemm", &["hr", "fc2.weight", "fc2.bias"], &["logits"], vec![("transB", Attr::Int(1))])
        .output("logits", DataType::F32, &[-1, 10])
        .build())
}
