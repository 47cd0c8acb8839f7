//! Backbone features (eval mode, the test transform: normalisation only) and the weighted
//! kNN classifier used as a monitor (InstDisc-style): cosine similarities of L2-normalised
//! features, the k nearest training images vote with weight exp(sim/T).

use crate::autograd::Tape;
use crate::data::ImageSet;
use crate::error::Result;
use crate::ops::gemm::matmul_ref;
use crate::ssl::{embed, Method};
use crate::tensor::Device;

/// Pooled backbone features [N, D] of the whole set, in order.
pub fn features(
    method: &mut dyn Method,
    data: &ImageSet,
    (mean, std, high_pass): ([f32; 3], [f32; 3], bool),
    batch: usize,
    device: &Device,
) -> Result<(Vec<f32>, usize)> {
    let mut out = Vec::new();
    let mut dim = 0;
    for start in (0..data.len()).step_by(batch.max(1)) {
        let end = (start + batch).min(data.len());
        let mut tape = Tape::new();
        let xv = tape.input(data.eval_batch_with(start..end, mean, std, high_pass, device)?);
        let f = embed(method, &mut tape, xv)?;
        dim = tape.value(f).shape()[1];
        out.extend(tape.value(f).to_vec()?);
    }
    Ok((out, dim))
}

fn l2n(x: &mut [f32], d: usize) {
    for row in x.chunks_mut(d) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= n);
    }
}

/// Top-1 accuracy of the weighted kNN vote.
#[allow(clippy::too_many_arguments)]
pub fn knn_accuracy(
    mut train: Vec<f32>,
    train_labels: &[u32],
    mut test: Vec<f32>,
    test_labels: &[u32],
    d: usize,
    classes: usize,
    k: usize,
    t: f32,
) -> f64 {
    l2n(&mut train, d);
    l2n(&mut test, d);
    let (n, m) = (train_labels.len(), test_labels.len());
    let sim = matmul_ref(&test, &train, None, m, n, d, false, true);
    let k = k.min(n).max(1);
    let mut correct = 0;
    for i in 0..m {
        let row = &sim[i * n..(i + 1) * n];
        let mut idx: Vec<usize> = (0..n).collect();
        idx.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]));
        let mut score = vec![0f32; classes];
        for &j in &idx[..k] {
            score[train_labels[j] as usize] += (row[j] / t).exp();
        }
        let pred = (0..classes)
            .max_by(|&a, &b| score[a].total_cmp(&score[b]))
            .unwrap_or(0);
        correct += (pred as u32 == test_labels[i]) as usize;
    }
    correct as f64 / m.max(1) as f64
}

/// Pooled features [N, D] of a bare backbone (e.g. rebuilt from a checkpoint), eval mode, in
/// dataset order, images normalised with `mean` / `std` only (and high-passed when
/// `high_pass`: the inputs of an `hp` masking run).
pub fn backbone_features(
    net: &crate::nn::resnet::ResNet,
    store: &mut crate::nn::ParamStore,
    data: &ImageSet,
    (mean, std, high_pass): ([f32; 3], [f32; 3], bool),
    device: &Device,
) -> Result<(Vec<f32>, usize)> {
    backbone_features_of(net, store, data.len(), |r| {
        data.eval_batch_with(r, mean, std, high_pass, device)
    })
}

/// Pooled features [n, D] of the `n` images that `batch(range)` makes ([len, 3, H, W]), eval
/// mode, no gradients, 256 images at a time.
pub fn backbone_features_of(
    net: &crate::nn::resnet::ResNet,
    store: &mut crate::nn::ParamStore,
    n: usize,
    mut batch: impl FnMut(std::ops::Range<usize>) -> Result<crate::tensor::Tensor>,
) -> Result<(Vec<f32>, usize)> {
    let (mut out, mut dim) = (Vec::new(), 0);
    for start in (0..n).step_by(256) {
        let end = (start + 256).min(n);
        let mut tape = Tape::new();
        let b = store.bind(&mut tape, false);
        let x = tape.input(batch(start..end)?);
        let f = tape.no_grad(|t| net.forward(t, store, &b, x, false))?;
        dim = tape.value(f).shape()[1];
        out.extend(tape.value(f).to_vec()?);
    }
    Ok((out, dim))
}
