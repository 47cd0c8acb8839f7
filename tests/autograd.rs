//! The tape: reverse topological order, gradient accumulation for values used twice,
//! stop-gradient (detach, no_grad), and a composite network whose gradients on the GPU equal
//! those of the CPU path.

mod common;
use common::*;
use viewcraft::ops::batchnorm::BatchNorm;
use viewcraft::ops::conv2d::Conv2d;
use viewcraft::ops::pool::MaxPool;
use viewcraft::tensor::{Device, Tensor};
use viewcraft::Tape;

#[test]
fn value_used_twice_accumulates() {
    let d = Device::Cpu;
    let mut tape = Tape::new();
    let x = tape.param(t(&[1.5, -2.0, 3.0], &[3], &d));
    // y = x·x + 3x  →  dy/dx = 2x + 3
    let xx = tape.mul(x, x).unwrap();
    let x3 = tape.scale(x, 3.0).unwrap();
    let y = tape.add(xx, x3).unwrap();
    let l = tape.sum(y).unwrap();
    let g = tape.backward(l).unwrap();
    assert_eq!(g.get(x).unwrap().to_vec().unwrap(), vec![6.0, -1.0, 9.0]);
}

#[test]
fn detach_and_no_grad_stop_gradients() {
    let d = Device::Cpu;
    let mut tape = Tape::new();
    let x = tape.param(t(&[1.0, 2.0], &[2], &d));
    let xd = tape.detach(x);
    // y = x · stopgrad(x)  →  dy/dx = stopgrad(x)
    let y = tape.mul(x, xd).unwrap();
    let z = tape.no_grad(|tp| tp.scale(x, 10.0).unwrap());
    assert!(!tape.requires_grad(z));
    let yz = tape.add(y, z).unwrap();
    let l = tape.sum(yz).unwrap();
    let g = tape.backward(l).unwrap();
    assert_eq!(g.get(x).unwrap().to_vec().unwrap(), vec![1.0, 2.0]);
    assert!(g.get(xd).is_none());
}

#[test]
fn backward_errors_are_typed() {
    let d = Device::Cpu;
    let mut tape = Tape::new();
    let x = tape.param(t(&[1.0, 2.0], &[2], &d));
    let e = tape.backward(x).unwrap_err().to_string();
    assert!(e.contains("scalar"), "{e}");
}

/// conv → BN → ReLU → max-pool → conv(s2) → BN → ReLU → global pool → linear → CE.
fn network(dev: &Device, data: &[Vec<f32>]) -> (f32, Vec<Vec<f32>>, Vec<f32>) {
    let mut tape = Tape::new();
    let x = tape.input(t(&data[0], &[3, 3, 10, 10], dev));
    let w1 = tape.param(t(&data[1], &[7, 3, 3, 3], dev));
    let g1 = tape.param(t(&data[2], &[7], dev));
    let b1 = tape.param(t(&data[3], &[7], dev));
    let w2 = tape.param(t(&data[4], &[5, 7, 3, 3], dev));
    let fw = tape.param(t(&data[5], &[4, 5], dev));
    let fb = tape.param(t(&data[6], &[4], dev));
    let mut rm1 = Tensor::zeros(&[7], dev).unwrap();
    let mut rv1 = Tensor::ones(&[7], dev).unwrap();
    let mut rm2 = Tensor::zeros(&[5], dev).unwrap();
    let mut rv2 = Tensor::ones(&[5], dev).unwrap();
    let h = tape.conv2d(x, w1, Conv2d::new(1, 1)).unwrap();
    let h = tape
        .batch_norm(
            h,
            Some(g1),
            Some(b1),
            &mut rm1,
            &mut rv1,
            BatchNorm::default(),
            true,
        )
        .unwrap();
    let h = tape.relu(h).unwrap();
    let h = tape
        .max_pool2d(
            h,
            MaxPool {
                k: 3,
                stride: 2,
                pad: 1,
            },
        )
        .unwrap();
    let h = tape.conv2d(h, w2, Conv2d::new(2, 1)).unwrap();
    let h = tape
        .batch_norm(
            h,
            None,
            None,
            &mut rm2,
            &mut rv2,
            BatchNorm::default(),
            true,
        )
        .unwrap();
    let h = tape.relu(h).unwrap();
    let h = tape.global_avg_pool(h).unwrap();
    let logits = tape.linear(h, fw, Some(fb)).unwrap();
    let labels = t(&[0.0, 3.0, 1.0], &[3], dev);
    let loss = tape.cross_entropy(logits, &labels).unwrap();
    let lv = tape.value(loss).item().unwrap();
    let g = tape.backward(loss).unwrap();
    let grads = [w1, g1, b1, w2, fw, fb]
        .iter()
        .map(|&p| g.get(p).unwrap().to_vec().unwrap())
        .collect();
    let mut stats = rm1.to_vec().unwrap();
    stats.extend(rv2.to_vec().unwrap());
    (lv, grads, stats)
}

#[test]
fn composite_network_gpu_equals_cpu() {
    let Some(g) = gpu() else { return };
    let (mut r, seed) = rng();
    let sizes = [900, 189, 7, 7, 315, 20, 4];
    let data: Vec<Vec<f32>> = sizes.iter().map(|&n| randn(&mut r, n)).collect();
    let (lc, gc, sc) = network(&Device::Cpu, &data);
    let (lg, gg, sg) = network(&g, &data);
    assert_close(
        &format!("composite loss seed {seed}"),
        &[lg],
        &[lc],
        1e-5,
        1e-5,
    );
    for (i, (a, b)) in gg.iter().zip(&gc).enumerate() {
        assert_close(&format!("composite grad {i} seed {seed}"), a, b, 1e-4, 1e-3);
    }
    assert_close(
        &format!("composite running stats seed {seed}"),
        &sg,
        &sc,
        1e-5,
        1e-5,
    );
}

#[test]
fn one_submit_per_step() {
    // A device of its own: other tests of this binary submit concurrently on the shared one.
    let Some(g) = own_gpu("submit counter", None) else {
        return;
    };
    let gpu = g.gpu().unwrap().clone();
    let (mut r, _) = rng();
    let data: Vec<Vec<f32>> = [900, 189, 7, 7, 315, 20, 4]
        .iter()
        .map(|&n| randn(&mut r, n))
        .collect();
    // Record a forward + backward without reading anything back: nothing is submitted until
    // the first readback.
    gpu.sync().unwrap();
    let (_, s0) = gpu.counters();
    let mut tape = Tape::new();
    let x = tape.param(t(&data[0], &[3, 3, 10, 10], &g));
    let w = tape.param(t(&data[1], &[7, 3, 3, 3], &g));
    let h = tape.conv2d(x, w, Conv2d::new(1, 1)).unwrap();
    let h = tape.relu(h).unwrap();
    let l = tape.mean(h).unwrap();
    let grads = tape.backward(l).unwrap();
    let (_, s1) = gpu.counters();
    assert_eq!(s1, s0, "recording must not submit");
    let _ = grads.get(w).unwrap().to_vec().unwrap();
    let (_, s2) = gpu.counters();
    assert_eq!(s2, s0 + 1, "one submit for the whole step and its readback");
}

/// Backward tells each op which of its inputs need a gradient, and no work is done for the
/// others: a two-input op sees exactly its inputs' flags, and the gradient of a constant
/// operand (MoCo's keys and queue, the images at the stem) is never computed.
#[test]
fn backward_skips_gradients_no_input_needs() {
    let d = Device::Cpu;
    let mut tape = Tape::new();
    let a = tape.param(t(&[1.0, 2.0], &[2], &d));
    let c = tape.input(t(&[3.0, 4.0], &[2], &d));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let y = {
        let seen = seen.clone();
        let v = viewcraft::ops::elementwise::mul(tape.value(a), tape.value(c)).unwrap();
        tape.record("probe", v, &[a, c], move |gy, needs| {
            seen.lock().unwrap().push(needs.to_vec());
            Ok(vec![Some(gy.clone()), None])
        })
    };
    let l = tape.sum(y).unwrap();
    let g = tape.backward(l).unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![vec![true, false]]);
    assert!(g.get(a).is_some() && g.get(c).is_none());
    // Every multi-input op on the adapter: fewer dispatches when an operand is constant.
    let Some(dev) = own_gpu("dispatch counter", None) else {
        return;
    };
    let gpu = dev.gpu().unwrap().clone();
    let (mut r, _) = rng();
    let (x, w) = (randn(&mut r, 2 * 3 * 8 * 8), randn(&mut r, 4 * 3 * 9));
    let (q, k) = (randn(&mut r, 6 * 16), randn(&mut r, 40 * 16));
    let dispatches = |constant: bool, op: &str| {
        let mut tape = Tape::new();
        let leaf = |tape: &mut Tape, v: &[f32], s: &[usize], c: bool| {
            let v = t(v, s, &dev);
            if c {
                tape.input(v)
            } else {
                tape.param(v)
            }
        };
        let y = match op {
            "matmul" => {
                let qv = leaf(&mut tape, &q, &[6, 16], false);
                let kv = leaf(&mut tape, &k, &[40, 16], constant);
                tape.matmul_t(qv, kv, false, true).unwrap()
            }
            "linear" => {
                let qv = leaf(&mut tape, &q, &[6, 16], constant);
                let kv = leaf(&mut tape, &k, &[40, 16], false);
                tape.linear(qv, kv, None).unwrap()
            }
            "mul" => {
                let qv = leaf(&mut tape, &q, &[6, 16], false);
                let kv = leaf(&mut tape, &k[..96], &[6, 16], constant);
                tape.mul(qv, kv).unwrap()
            }
            _ => {
                let xv = leaf(&mut tape, &x, &[2, 3, 8, 8], constant);
                let wv = leaf(&mut tape, &w, &[4, 3, 3, 3], false);
                tape.conv2d(xv, wv, Conv2d::new(1, 1)).unwrap()
            }
        };
        let y = tape.relu(y).unwrap();
        let l = tape.sum(y).unwrap();
        gpu.sync().unwrap();
        let (d0, _) = gpu.counters();
        let g = tape.backward(l).unwrap();
        let (d1, _) = gpu.counters();
        drop(g);
        d1 - d0
    };
    for op in ["matmul", "linear", "mul", "conv2d"] {
        let (both, one) = (dispatches(false, op), dispatches(true, op));
        assert!(
            one < both,
            "{op}: {one} dispatches in backward with a constant operand, {both} without"
        );
    }
}
