//! Finite-difference checks, in f64, of every op's CPU reference backward: for a random
//! upstream gradient gy, L(x) = Σ gy ⊙ f(x) and the analytic gradient must match central
//! differences. (Copies such as concat, slice and reshape have no arithmetic to check; their
//! GPU/CPU parity is exact.)

mod common;
use common::*;
use rand::rngs::StdRng;
use viewcraft::ops::gemm::matmul_ref;
use viewcraft::ops::linear::{matmul_grad_plan, Operand};
use viewcraft::ops::{batchnorm, conv2d, cross_entropy, elementwise as ew, l2norm, pool, reduce};

fn r64(r: &mut StdRng, n: usize) -> Vec<f64> {
    to_f64(&randn(r, n))
}

#[test]
fn elementwise_and_reductions() {
    let (mut r, seed) = rng();
    let n = 12;
    let x = to_f64(&randn_away(&mut r, n, 0.05));
    let y = r64(&mut r, n);
    let gy = r64(&mut r, n);
    check_grad(
        &format!("relu seed {seed}"),
        &x,
        &ew::relu_backward_ref(&x, &gy),
        |x| dot(&gy, &ew::relu_ref(x)),
    );
    check_grad(
        &format!("mul seed {seed}"),
        &x,
        &ew::mul_ref(&gy, &y),
        |x| dot(&gy, &ew::mul_ref(x, &y)),
    );
    check_grad(&format!("add seed {seed}"), &x, &gy, |x| {
        dot(&gy, &ew::add_ref(x, &y))
    });
    check_grad(
        &format!("affine seed {seed}"),
        &x,
        &ew::affine_ref(&gy, -1.5, 0.0),
        |x| dot(&gy, &ew::affine_ref(x, -1.5, 0.3)),
    );
    // sum: gx = g (broadcast); row_sum: gx = row_broadcast(g); col_sum: gx_ij = g_j.
    let g1 = 0.7;
    check_grad(&format!("sum seed {seed}"), &x, &vec![g1; n], |x| {
        g1 * reduce::sum_ref(x)
    });
    let (m, k) = (3, 4);
    let gr = r64(&mut r, m);
    check_grad(
        &format!("row_sum seed {seed}"),
        &x,
        &reduce::row_broadcast_ref(&gr, k),
        |x| dot(&gr, &reduce::row_sum_ref(x, m, k)),
    );
    let gc = r64(&mut r, k);
    let want: Vec<f64> = (0..m * k).map(|i| gc[i % k]).collect();
    check_grad(&format!("col_sum seed {seed}"), &x, &want, |x| {
        dot(&gc, &reduce::col_sum_ref(x, m, k))
    });
}

#[test]
fn matmul_every_transpose() {
    let (m, n, k) = (3, 4, 5);
    for ta in [false, true] {
        for tb in [false, true] {
            let (mut r, seed) = rng();
            let (a, b, gc) = (r64(&mut r, m * k), r64(&mut r, k * n), r64(&mut r, m * n));
            let [pa, pb] = matmul_grad_plan(ta, tb);
            let eval = |p: (Operand, Operand, bool, bool)| {
                let pick = |o| match o {
                    Operand::A => (&a, if ta { [k, m] } else { [m, k] }),
                    Operand::B => (&b, if tb { [n, k] } else { [k, n] }),
                    Operand::G => (&gc, [m, n]),
                };
                let ((l, ls), (rr, _)) = (pick(p.0), pick(p.1));
                let (rows, inner) = if p.2 { (ls[1], ls[0]) } else { (ls[0], ls[1]) };
                let cols = rr.len() / inner;
                matmul_ref(l, rr, None, rows, cols, inner, p.2, p.3)
            };
            let lbl = format!("matmul ta {ta} tb {tb} seed {seed}");
            check_grad(&format!("{lbl} dA"), &a, &eval(pa), |a| {
                dot(&gc, &matmul_ref(a, &b, None, m, n, k, ta, tb))
            });
            check_grad(&format!("{lbl} dB"), &b, &eval(pb), |b| {
                dot(&gc, &matmul_ref(&a, b, None, m, n, k, ta, tb))
            });
        }
    }
    // linear bias: gb = column sums of gy.
    let (mut r, seed) = rng();
    let (x, w, bias, gy) = (
        r64(&mut r, m * k),
        r64(&mut r, n * k),
        r64(&mut r, n),
        r64(&mut r, m * n),
    );
    check_grad(
        &format!("linear bias seed {seed}"),
        &bias,
        &reduce::col_sum_ref(&gy, m, n),
        |b| dot(&gy, &matmul_ref(&x, &w, Some(b), m, n, k, false, true)),
    );
}

#[test]
fn conv2d_input_and_weight() {
    for (n, c, h, w, o, kk, s, p) in [
        (2, 3, 5, 5, 4, 3, 1, 1),
        (1, 2, 7, 6, 3, 3, 2, 1),
        (2, 3, 4, 4, 2, 1, 2, 0),
        (1, 2, 9, 9, 2, 7, 2, 3),
    ] {
        let (mut r, seed) = rng();
        let d = conv2d::Conv2d::new(s, p)
            .dims(&[n, c, h, w], &[o, c, kk, kk])
            .unwrap();
        let x = r64(&mut r, n * c * h * w);
        let wt = r64(&mut r, o * c * kk * kk);
        let gy = r64(&mut r, n * o * d.oh * d.ow);
        let lbl = format!("conv2d {d:?} seed {seed}");
        check_grad(
            &format!("{lbl} dx"),
            &x,
            &conv2d::backward_input_ref(&gy, &wt, &d),
            |x| dot(&gy, &conv2d::forward_ref(x, &wt, &d)),
        );
        check_grad(
            &format!("{lbl} dw"),
            &wt,
            &conv2d::backward_weight_ref(&gy, &x, &d),
            |w| dot(&gy, &conv2d::forward_ref(&x, w, &d)),
        );
    }
}

#[test]
fn batchnorm_train_and_eval() {
    for shape in [vec![3usize, 2, 2, 3], vec![5, 3]] {
        let (mut r, seed) = rng();
        let (n, c, s) = batchnorm::dims(&shape).unwrap();
        let len = n * c * s;
        let x = r64(&mut r, len);
        let (gamma, beta, gy) = (r64(&mut r, c), r64(&mut r, c), r64(&mut r, len));
        let eps = 1e-5;
        let fwd = |x: &[f64], g: &[f64], b: &[f64]| {
            let (m, v) = batchnorm::stats_ref(x, n, c, s);
            let inv: Vec<f64> = v.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
            batchnorm::apply_ref(x, &m, &inv, Some(g), Some(b), n, c, s)
        };
        let (m, v) = batchnorm::stats_ref(&x, n, c, s);
        let inv: Vec<f64> = v.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let (gx, gg, gb) = batchnorm::backward_ref(&x, &gy, &m, &inv, Some(&gamma), n, c, s, true);
        let lbl = format!("batch_norm train {shape:?} seed {seed}");
        check_grad(&format!("{lbl} dx"), &x, &gx, |x| {
            dot(&gy, &fwd(x, &gamma, &beta))
        });
        check_grad(&format!("{lbl} dgamma"), &gamma, &gg, |g| {
            dot(&gy, &fwd(&x, g, &beta))
        });
        check_grad(&format!("{lbl} dbeta"), &beta, &gb, |b| {
            dot(&gy, &fwd(&x, &gamma, b))
        });
        // Eval: fixed statistics.
        let rm = r64(&mut r, c);
        let rinv: Vec<f64> = r64(&mut r, c)
            .iter()
            .map(|v| 1.0 / (v.abs() + 0.5).sqrt())
            .collect();
        let (gx, _, _) = batchnorm::backward_ref(&x, &gy, &rm, &rinv, Some(&gamma), n, c, s, false);
        check_grad(
            &format!("batch_norm eval {shape:?} seed {seed} dx"),
            &x,
            &gx,
            |x| {
                dot(
                    &gy,
                    &batchnorm::apply_ref(x, &rm, &rinv, Some(&gamma), Some(&beta), n, c, s),
                )
            },
        );
    }
}

#[test]
fn pooling_l2norm_cross_entropy() {
    let (mut r, seed) = rng();
    // Distinct values so the maximum is unique and finite differences stay in one branch.
    let cfg = pool::MaxPool {
        k: 3,
        stride: 2,
        pad: 1,
    };
    let shape = [2usize, 2, 7, 7];
    let (planes, h, w, oh, ow) = pool::max_pool_dims(&shape, cfg).unwrap();
    let x: Vec<f64> = (0..planes * h * w)
        .map(|i| ((i * 37) % 101) as f64 * 0.01 + 0.001 * r64(&mut r, 1)[0])
        .collect();
    let gy = r64(&mut r, planes * oh * ow);
    let (_, idx) = pool::max_pool_ref(&x, planes, h, w, oh, ow, cfg);
    check_grad(
        &format!("max_pool seed {seed}"),
        &x,
        &pool::max_pool_backward_ref(&gy, &idx, planes, h, w, oh, ow),
        |x| dot(&gy, &pool::max_pool_ref(x, planes, h, w, oh, ow, cfg).0),
    );
    let gp = r64(&mut r, planes);
    check_grad(
        &format!("global_avg_pool seed {seed}"),
        &x,
        &pool::avg_pool_backward_ref(&gp, h * w),
        |x| dot(&gp, &pool::avg_pool_ref(x, planes, h * w)),
    );

    let (n, d) = (4, 6);
    let x = r64(&mut r, n * d);
    let gy = r64(&mut r, n * d);
    check_grad(
        &format!("l2_normalize seed {seed}"),
        &x,
        &l2norm::backward_ref(&x, &gy, n, d, 1e-12),
        |x| dot(&gy, &l2norm::forward_ref(x, n, d, 1e-12)),
    );

    let (n, k) = (4, 5);
    let logits = r64(&mut r, n * k);
    let labels = vec![0usize, 4, 2, 2];
    let g = r64(&mut r, n);
    check_grad(
        &format!("cross_entropy seed {seed}"),
        &logits,
        &cross_entropy::backward_ref(&logits, &labels, &g, n, k),
        |x| dot(&g, &cross_entropy::forward_ref(x, &labels, n, k)),
    );
}

#[test]
fn info_nce_both_modes() {
    use viewcraft::ops::cross_entropy::{info_nce_backward_ref, info_nce_ref, NceMode};
    for (n, m, mode) in [
        (4, 4, NceMode::NtXent),
        (3, 8, NceMode::Moco { in_batch: 3 }),
    ] {
        let (mut r, seed) = rng();
        let sim = r64(&mut r, n * m);
        let g = r64(&mut r, n);
        check_grad(
            &format!("info_nce {mode:?} seed {seed}"),
            &sim,
            &info_nce_backward_ref(&sim, &g, n, m, mode, 2.0),
            |s| dot(&g, &info_nce_ref(s, n, m, mode, 2.0)),
        );
    }
}
