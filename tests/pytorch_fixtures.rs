//! The CPU reference against golden PyTorch float64 values (tests/fixtures, see its README):
//! run in f64 on the fixture's f32 inputs it must agree to ~1e-10, which pins down what each
//! op means (BN's variances, ReLU's gradient at 0, the first-max rule...). The f32 paths (CPU
//! and, when present, the GPU) must agree within f32 rounding.

mod common;
use common::*;
use viewcraft::ops::{batchnorm, conv2d, cross_entropy, elementwise as ew, gemm, l2norm, pool};
use viewcraft::tensor::{Device, Tensor};

const TIGHT: (f64, f64) = (1e-10, 1e-9);

fn devices() -> Vec<Device> {
    let mut d = vec![Device::Cpu];
    d.extend(gpu());
    d
}

fn tv(x: &Tensor) -> Vec<f32> {
    x.to_vec().unwrap()
}

#[test]
fn conv2d_matches_pytorch() {
    for name in [
        "conv2d_k3_s1_p1",
        "conv2d_k3_s2_p1",
        "conv2d_k1_s2_p0",
        "conv2d_k7_s2_p3",
    ] {
        let fx = Fixture::load(name);
        let stride: usize = fx.meta("stride").parse().unwrap();
        let pad: usize = fx.meta("padding").parse().unwrap();
        let cfg = conv2d::Conv2d::new(stride, pad);
        let (x, xs) = fx.get("x");
        let (w, ws) = fx.get("weight");
        let gy = fx.f64("grad_y");
        let d = cfg.dims(&xs, &ws).unwrap();
        assert_close64(
            &format!("{name} y (f64)"),
            &conv2d::forward_ref(&x, &w, &d),
            &fx.f64("y"),
        );
        assert_close64(
            &format!("{name} grad_x (f64)"),
            &conv2d::backward_input_ref(&gy, &w, &d),
            &fx.f64("grad_x"),
        );
        assert_close64(
            &format!("{name} grad_weight (f64)"),
            &conv2d::backward_weight_ref(&gy, &x, &d),
            &fx.f64("grad_weight"),
        );
        for dev in devices() {
            let (xt, wt, gyt) = (
                t(&fx.f32("x"), &xs, &dev),
                t(&fx.f32("weight"), &ws, &dev),
                t(&fx.f32("grad_y"), &fx.shape("grad_y"), &dev),
            );
            let lbl = format!("{name} on {dev:?}");
            assert_close(
                &format!("{lbl} y"),
                &tv(&conv2d::forward(&xt, &wt, cfg).unwrap()),
                &fx.f64("y"),
                1e-5,
                1e-5,
            );
            assert_close(
                &format!("{lbl} grad_x"),
                &tv(&conv2d::backward_input(&gyt, &wt, &d).unwrap()),
                &fx.f64("grad_x"),
                1e-5,
                1e-5,
            );
            assert_close(
                &format!("{lbl} grad_w"),
                &tv(&conv2d::backward_weight(&gyt, &xt, &d).unwrap()),
                &fx.f64("grad_weight"),
                1e-5,
                1e-5,
            );
        }
    }
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// f64 against f64 with the tight tolerance.
fn assert_close64(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert!(
        want.iter().any(|w| w.abs() > 1e-12),
        "{what}: reference all zeros"
    );
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= TIGHT.0 + TIGHT.1 * w.abs(),
            "{what}: [{i}] got {g:.12e} want {w:.12e}"
        );
    }
}

#[test]
fn batchnorm_matches_pytorch() {
    for name in ["batchnorm2d", "batchnorm1d"] {
        let fx = Fixture::load(name);
        let (x, xs) = fx.get("x");
        let (n, c, s) = batchnorm::dims(&xs).unwrap();
        let (gamma, beta, gy) = (fx.f64("gamma"), fx.f64("beta"), fx.f64("grad_y"));
        let (mean, var) = batchnorm::stats_ref(&x, n, c, s);
        let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + 1e-5).sqrt()).collect();
        assert_close64(
            &format!("{name} y_train"),
            &batchnorm::apply_ref(&x, &mean, &invstd, Some(&gamma), Some(&beta), n, c, s),
            &fx.f64("y_train"),
        );
        let (gx, gg, gb) =
            batchnorm::backward_ref(&x, &gy, &mean, &invstd, Some(&gamma), n, c, s, true);
        assert_close64(&format!("{name} grad_x"), &gx, &fx.f64("grad_x"));
        assert_close64(&format!("{name} grad_gamma"), &gg, &fx.f64("grad_gamma"));
        assert_close64(&format!("{name} grad_beta"), &gb, &fx.f64("grad_beta"));
        // Running statistics use the unbiased variance; eval mode uses them.
        let m = (n * s) as f64;
        let rm: Vec<f64> = fx
            .f64("running_mean")
            .iter()
            .zip(&mean)
            .map(|(r, v)| 0.9 * r + 0.1 * v)
            .collect();
        let rv: Vec<f64> = fx
            .f64("running_var")
            .iter()
            .zip(&var)
            .map(|(r, v)| 0.9 * r + 0.1 * v * m / (m - 1.0))
            .collect();
        assert_close64(
            &format!("{name} running_mean"),
            &rm,
            &fx.f64("running_mean_after"),
        );
        assert_close64(
            &format!("{name} running_var"),
            &rv,
            &fx.f64("running_var_after"),
        );
        // The fixture's eval-mode output uses the running statistics as they were before the
        // training forward (a separate module in the same initial state).
        let rinv: Vec<f64> = fx
            .f64("running_var")
            .iter()
            .map(|v| 1.0 / (v + 1e-5).sqrt())
            .collect();
        assert_close64(
            &format!("{name} y_eval"),
            &batchnorm::apply_ref(
                &x,
                &fx.f64("running_mean"),
                &rinv,
                Some(&gamma),
                Some(&beta),
                n,
                c,
                s,
            ),
            &fx.f64("y_eval"),
        );

        for dev in devices() {
            let lbl = format!("{name} on {dev:?}");
            let mut rmt = t(&fx.f32("running_mean"), &[c], &dev);
            let mut rvt = t(&fx.f32("running_var"), &[c], &dev);
            let (gt, bt) = (
                t(&fx.f32("gamma"), &[c], &dev),
                t(&fx.f32("beta"), &[c], &dev),
            );
            let xt = t(&fx.f32("x"), &xs, &dev);
            let cfg = batchnorm::BatchNorm::default();
            let fw = batchnorm::forward(
                &xt,
                Some(&gt),
                Some(&bt),
                &mut rmt,
                &mut rvt,
                cfg,
                true,
                true,
                false,
            )
            .unwrap();
            assert_close(
                &format!("{lbl} y_train"),
                &tv(&fw.y),
                &fx.f64("y_train"),
                1e-5,
                1e-5,
            );
            let (gx, gg, gb) = batchnorm::backward(
                &xt,
                &t(&fx.f32("grad_y"), &xs, &dev),
                &fw.saved,
                Some(&gt),
                true,
            )
            .unwrap();
            assert_close(
                &format!("{lbl} grad_x"),
                &tv(&gx),
                &fx.f64("grad_x"),
                1e-5,
                1e-4,
            );
            assert_close(
                &format!("{lbl} grad_gamma"),
                &tv(&gg),
                &fx.f64("grad_gamma"),
                1e-5,
                1e-4,
            );
            assert_close(
                &format!("{lbl} grad_beta"),
                &tv(&gb),
                &fx.f64("grad_beta"),
                1e-5,
                1e-4,
            );
            assert_close(
                &format!("{lbl} running_mean"),
                &tv(&rmt),
                &fx.f64("running_mean_after"),
                1e-6,
                1e-5,
            );
            assert_close(
                &format!("{lbl} running_var"),
                &tv(&rvt),
                &fx.f64("running_var_after"),
                1e-6,
                1e-5,
            );
            let (mut rm0, mut rv0) = (
                t(&fx.f32("running_mean"), &[c], &dev),
                t(&fx.f32("running_var"), &[c], &dev),
            );
            let ev = batchnorm::forward(
                &xt,
                Some(&gt),
                Some(&bt),
                &mut rm0,
                &mut rv0,
                cfg,
                false,
                false,
                false,
            )
            .unwrap();
            assert_close(
                &format!("{lbl} y_eval"),
                &tv(&ev.y),
                &fx.f64("y_eval"),
                1e-5,
                1e-5,
            );
        }
    }
}

#[test]
fn linear_matches_pytorch() {
    let fx = Fixture::load("linear");
    let (x, xs) = fx.get("x");
    let (w, ws) = fx.get("weight");
    let (b, gy) = (fx.f64("bias"), fx.f64("grad_y"));
    let (m, k, n) = (xs[0], xs[1], ws[0]);
    assert_close64(
        "linear y",
        &gemm::matmul_ref(&x, &w, Some(&b), m, n, k, false, true),
        &fx.f64("y"),
    );
    for dev in devices() {
        let mut tape = viewcraft::Tape::new();
        let xv = tape.param(t(&fx.f32("x"), &xs, &dev));
        let wv = tape.param(t(&fx.f32("weight"), &ws, &dev));
        let bv = tape.param(t(&fx.f32("bias"), &[n], &dev));
        let y = tape.linear(xv, wv, Some(bv)).unwrap();
        assert_close(
            &format!("linear y on {dev:?}"),
            &tv(tape.value(y)),
            &fx.f64("y"),
            1e-5,
            1e-5,
        );
        let g = tape
            .backward_with(y, t(&to_f32(&gy), &[m, n], &dev))
            .unwrap();
        assert_close(
            &format!("linear grad_x on {dev:?}"),
            &tv(g.get(xv).unwrap()),
            &fx.f64("grad_x"),
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("linear grad_w on {dev:?}"),
            &tv(g.get(wv).unwrap()),
            &fx.f64("grad_weight"),
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("linear grad_b on {dev:?}"),
            &tv(g.get(bv).unwrap()),
            &fx.f64("grad_bias"),
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn pooling_relu_l2norm_cross_entropy_match_pytorch() {
    // max pool 3x3 s2 p1
    let fx = Fixture::load("maxpool_k3_s2_p1");
    let (x, xs) = fx.get("x");
    let cfg = pool::MaxPool {
        k: 3,
        stride: 2,
        pad: 1,
    };
    let (planes, h, w, oh, ow) = pool::max_pool_dims(&xs, cfg).unwrap();
    let (y, idx) = pool::max_pool_ref(&x, planes, h, w, oh, ow, cfg);
    assert_close64("maxpool y", &y, &fx.f64("y"));
    assert_close64(
        "maxpool grad_x",
        &pool::max_pool_backward_ref(&fx.f64("grad_y"), &idx, planes, h, w, oh, ow),
        &fx.f64("grad_x"),
    );
    // global average pool
    let fx = Fixture::load("global_avg_pool");
    let (x, xs) = fx.get("x");
    let hw = xs[2] * xs[3];
    assert_close64(
        "gap y",
        &pool::avg_pool_ref(&x, xs[0] * xs[1], hw),
        &fx.f64("y"),
    );
    assert_close64(
        "gap grad_x",
        &pool::avg_pool_backward_ref(&fx.f64("grad_y"), hw),
        &fx.f64("grad_x"),
    );
    // relu (gradient 0 at 0)
    let fx = Fixture::load("relu");
    assert_close64("relu y", &ew::relu_ref(&fx.f64("x")), &fx.f64("y"));
    assert_close64(
        "relu grad_x",
        &ew::relu_backward_ref(&fx.f64("x"), &fx.f64("grad_y")),
        &fx.f64("grad_x"),
    );
    // l2 normalize
    let fx = Fixture::load("l2_normalize");
    let (x, xs) = fx.get("x");
    assert_close64(
        "l2norm y",
        &l2norm::forward_ref(&x, xs[0], xs[1], 1e-12),
        &fx.f64("y"),
    );
    assert_close64(
        "l2norm grad_x",
        &l2norm::backward_ref(&x, &fx.f64("grad_y"), xs[0], xs[1], 1e-12),
        &fx.f64("grad_x"),
    );
    // cross entropy (mean)
    let fx = Fixture::load("cross_entropy");
    let (x, xs) = fx.get("logits");
    let labels: Vec<usize> = fx.f64("labels").iter().map(|&v| v as usize).collect();
    let (n, k) = (xs[0], xs[1]);
    let rows = cross_entropy::forward_ref(&x, &labels, n, k);
    assert_close64(
        "ce loss",
        &[rows.iter().sum::<f64>() / n as f64],
        &fx.f64("loss"),
    );
    let g = vec![1.0 / n as f64; n];
    assert_close64(
        "ce grad",
        &cross_entropy::backward_ref(&x, &labels, &g, n, k),
        &fx.f64("grad_logits"),
    );

    for dev in devices() {
        let mut tape = viewcraft::Tape::new();
        let lv = tape.param(t(&fx.f32("logits"), &xs, &dev));
        let lab = t(&fx.f32("labels"), &[n], &dev);
        let loss = tape.cross_entropy(lv, &lab).unwrap();
        assert_close(
            &format!("ce loss on {dev:?}"),
            &tv(tape.value(loss)),
            &fx.f64("loss"),
            1e-6,
            1e-5,
        );
        let gr = tape.backward(loss).unwrap();
        assert_close(
            &format!("ce grad on {dev:?}"),
            &tv(gr.get(lv).unwrap()),
            &fx.f64("grad_logits"),
            1e-6,
            1e-5,
        );
        let fxp = Fixture::load("maxpool_k3_s2_p1");
        let xt = t(&fxp.f32("x"), &fxp.shape("x"), &dev);
        let (yt, it) = pool::max_pool(&xt, cfg).unwrap();
        assert_close(
            &format!("maxpool y on {dev:?}"),
            &tv(&yt),
            &fxp.f64("y"),
            0.0,
            1e-7,
        );
        let gy = t(&fxp.f32("grad_y"), &fxp.shape("grad_y"), &dev);
        assert_close(
            &format!("maxpool grad on {dev:?}"),
            &tv(&pool::max_pool_backward(&gy, &it, &fxp.shape("x"), cfg).unwrap()),
            &fxp.f64("grad_x"),
            1e-6,
            1e-6,
        );
    }
}
