//! Every op, forward and every gradient: the wgpu kernel against the CPU reference on fresh
//! random inputs and several shapes, odd ones included (tolerances as stated in each op's
//! module). Runs on whatever adapter exists (lavapipe here and in CI).

mod common;
use common::*;
use viewcraft::ops::{
    batchnorm, conv2d, cross_entropy, elementwise as ew, gemm, l2norm, linear, pool, reduce,
    shape_ops,
};
use viewcraft::tensor::{Device, Tensor};

fn both(data: &[f32], shape: &[usize], g: &Device) -> (Tensor, Tensor) {
    (t(data, shape, &Device::Cpu), t(data, shape, g))
}

fn v(x: &Tensor) -> Vec<f32> {
    x.to_vec().unwrap()
}

#[test]
fn elementwise_ops() {
    let Some(g) = gpu() else { return };
    for shape in [vec![7usize], vec![3, 7, 5, 5], vec![1000, 33]] {
        let (mut r, seed) = rng();
        let n: usize = shape.iter().product();
        let (xc, xg) = both(&randn_away(&mut r, n, 1e-3), &shape, &g);
        let (yc, yg) = both(&randn(&mut r, n), &shape, &g);
        let w = |s: &str| format!("{s} {shape:?} seed {seed}");
        assert_close(
            &w("relu"),
            &v(&ew::relu(&xg).unwrap()),
            &v(&ew::relu(&xc).unwrap()),
            0.0,
            0.0,
        );
        assert_close(
            &w("relu_backward"),
            &v(&ew::relu_backward(&xg, &yg).unwrap()),
            &v(&ew::relu_backward(&xc, &yc).unwrap()),
            0.0,
            0.0,
        );
        assert_close(
            &w("add"),
            &v(&ew::add(&xg, &yg).unwrap()),
            &v(&ew::add(&xc, &yc).unwrap()),
            1e-6,
            1e-6,
        );
        assert_close(
            &w("mul"),
            &v(&ew::mul(&xg, &yg).unwrap()),
            &v(&ew::mul(&xc, &yc).unwrap()),
            1e-6,
            1e-6,
        );
        assert_close(
            &w("affine"),
            &v(&ew::affine(&xg, -1.7, 0.3).unwrap()),
            &v(&ew::affine(&xc, -1.7, 0.3).unwrap()),
            1e-6,
            1e-6,
        );
        let s = ew::broadcast_scalar(&reduce::sum(&xg).unwrap(), 0.5, &shape).unwrap();
        let sc = ew::broadcast_scalar(&reduce::sum(&xc).unwrap(), 0.5, &shape).unwrap();
        let tol = 1e-5 * (n as f64).sqrt() * 4.0;
        assert_close(&w("broadcast_scalar(sum)"), &v(&s), &v(&sc), tol, 1e-5);
        let f = Tensor::full(2.5, &shape, &g).unwrap();
        assert!(v(&f).iter().all(|&x| x == 2.5), "fill {shape:?}");
    }
}

#[test]
fn reductions() {
    let Some(g) = gpu() else { return };
    for (m, n) in [(1, 1), (3, 7), (65, 129), (512, 300)] {
        let (mut r, seed) = rng();
        let (xc, xg) = both(&randn(&mut r, m * n), &[m, n], &g);
        let tol = 1e-5 * ((m * n) as f64).sqrt() * 4.0;
        let w = |s: &str| format!("{s} [{m},{n}] seed {seed}");
        assert_close(
            &w("sum"),
            &v(&reduce::sum(&xg).unwrap()),
            &v(&reduce::sum(&xc).unwrap()),
            tol,
            1e-5,
        );
        assert_close(
            &w("mean"),
            &v(&reduce::mean(&xg).unwrap()),
            &v(&reduce::mean(&xc).unwrap()),
            tol,
            1e-5,
        );
        assert_close(
            &w("row_sum"),
            &v(&reduce::row_sum(&xg).unwrap()),
            &v(&reduce::row_sum(&xc).unwrap()),
            tol,
            1e-5,
        );
        assert_close(
            &w("col_sum"),
            &v(&reduce::col_sum(&xg, 0.5).unwrap()),
            &v(&reduce::col_sum(&xc, 0.5).unwrap()),
            tol,
            1e-5,
        );
        let (gc, gg) = both(&randn(&mut r, m), &[m], &g);
        assert_close(
            &w("row_broadcast"),
            &v(&reduce::row_broadcast(&gg, n, 2.0).unwrap()),
            &v(&reduce::row_broadcast(&gc, n, 2.0).unwrap()),
            1e-6,
            1e-6,
        );
    }
}

/// A device of its own per kernel family (the one not chosen for this adapter is forced on
/// it, so both are validated wherever the tests run: lavapipe picks the register tiles, real
/// GPUs the workgroup tiles), with the workgroup GEMM tiles to run on each: every tile that
/// fits the adapter for the workgroup family (`None`: the adapter's choice per shape).
fn kernel_families(purpose: &str) -> Vec<(Device, Vec<Option<gemm::Tiles>>)> {
    use viewcraft::gpu::KernelVariant::*;
    let mut out = Vec::new();
    for variant in [RegisterTiled, WorkgroupTiled] {
        let Some(g) = own_gpu(purpose, Some(variant)) else {
            return Vec::new();
        };
        let Device::Gpu(adapter) = &g else {
            unreachable!("an adapter device")
        };
        // Every output element must be written: no stale pooled values pass.
        adapter.set_poison(true);
        let mut tiles = vec![None];
        if variant == WorkgroupTiled {
            let l = &adapter.limits;
            tiles.extend(
                gemm::Tiles::ALL
                    .into_iter()
                    .filter(|t| {
                        t.wg <= l.max_compute_invocations_per_workgroup
                            && t.storage_bytes() <= l.max_compute_workgroup_storage_size
                    })
                    .map(Some),
            );
            assert!(
                tiles.len() >= 3,
                "no workgroup tile fits {}",
                adapter.name()
            );
        }
        out.push((g, tiles));
    }
    out
}

/// `f` under a forced tile (or the adapter's choice).
fn tiled<R>(tiles: Option<gemm::Tiles>, f: impl FnOnce() -> R) -> R {
    match tiles {
        Some(t) => gemm::with_tiles(t, f),
        None => f(),
    }
}

#[test]
fn matmul_all_transposes() {
    // Tolerance: dot products of length k in another order, atol 2e-5·√k, rtol 1e-4.
    for (g, tiles) in kernel_families("matmul") {
        for (m, n, k) in [
            (1, 1, 1),
            (5, 3, 7),
            (33, 65, 17),
            (128, 96, 200),
            (3, 130, 64),
            (67, 129, 300),
            (24, 512, 36),
        ] {
            for ta in [false, true] {
                for tb in [false, true] {
                    let (mut r, seed) = rng();
                    let ash = if ta { [k, m] } else { [m, k] };
                    let bsh = if tb { [n, k] } else { [k, n] };
                    let (ac, ag) = both(&randn(&mut r, m * k), &ash, &g);
                    let (bc, bg) = both(&randn(&mut r, k * n), &bsh, &g);
                    let (biasc, biasg) = both(&randn(&mut r, n), &[n], &g);
                    let tol = 1e-5 * (k as f64).sqrt() * 2.0;
                    for bias in [true, false] {
                        let (bc_, bg_) = (bias.then_some(&biasc), bias.then_some(&biasg));
                        let want = v(&linear::matmul_t(&ac, &bc, bc_, ta, tb).unwrap());
                        for &tile in &tiles {
                            assert_close(
                                &format!(
                                    "matmul m{m} n{n} k{k} ta{ta} tb{tb} bias {bias} on {g:?} tiles {tile:?} seed {seed}"
                                ),
                                &tiled(tile, || v(&linear::matmul_t(&ag, &bg, bg_, ta, tb).unwrap())),
                                &want,
                                tol,
                                1e-4,
                            );
                        }
                        // Column tiles carried by grid z (a 2-workgroup-wide grid).
                        assert_close(
                            &format!(
                                "matmul m{m} n{n} k{k} ta{ta} tb{tb} bias {bias} on {g:?} grid x ≤ 2 seed {seed}"
                            ),
                            &gemm::with_grid_x_limit(2, || {
                                v(&linear::matmul_t(&ag, &bg, bg_, ta, tb).unwrap())
                            }),
                            &want,
                            tol,
                            1e-4,
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn linear_forward_and_grads() {
    let Some(g) = gpu() else { return };
    for (b, i, o) in [(5, 7, 3), (32, 512, 128), (3, 17, 31)] {
        let (mut r, seed) = rng();
        let data = [
            randn(&mut r, b * i),
            randn(&mut r, o * i),
            randn(&mut r, o),
            randn(&mut r, b * o),
        ];
        let run = |d: &Device| {
            let mut tape = viewcraft::Tape::new();
            let x = tape.param(t(&data[0], &[b, i], d));
            let w = tape.param(t(&data[1], &[o, i], d));
            let bias = tape.param(t(&data[2], &[o], d));
            let y = tape.linear(x, w, Some(bias)).unwrap();
            let yv = v(tape.value(y));
            let grads = tape.backward_with(y, t(&data[3], &[b, o], d)).unwrap();
            (
                yv,
                v(grads.get(x).unwrap()),
                v(grads.get(w).unwrap()),
                v(grads.get(bias).unwrap()),
            )
        };
        let (c, gp) = (run(&Device::Cpu), run(&g));
        let w = |s: &str| format!("linear {s} [{b},{i}]->{o} seed {seed}");
        assert_close(&w("y"), &gp.0, &c.0, 1e-5 * (i as f64).sqrt() * 2.0, 1e-4);
        assert_close(
            &w("grad_x"),
            &gp.1,
            &c.1,
            1e-5 * (o as f64).sqrt() * 2.0,
            1e-4,
        );
        assert_close(
            &w("grad_w"),
            &gp.2,
            &c.2,
            1e-5 * (b as f64).sqrt() * 2.0,
            1e-4,
        );
        assert_close(
            &w("grad_b"),
            &gp.3,
            &c.3,
            1e-5 * (b as f64).sqrt() * 2.0,
            1e-4,
        );
    }
}

#[test]
fn conv2d_forward_and_grads() {
    // Tolerance: sums of C·K² (forward), O·K² (input grad) or N·OH·OW (weight grad) products
    // in another order: atol 2e-5·√len, rtol 1e-4.
    // (n, c, h, w, o, k, stride, pad)
    let cases = [
        (3, 7, 5, 5, 5, 3, 1, 1),
        (2, 4, 9, 9, 6, 3, 2, 1),
        // 1×1 stride 2 (ResNet's shortcut): three of four input-gradient phases have no taps.
        (2, 6, 8, 8, 4, 1, 2, 0),
        (2, 12, 7, 7, 67, 1, 2, 0),
        // 7×7 stride 2 (ImageNet stem), 3 input channels, an odd map.
        (2, 3, 15, 15, 5, 7, 2, 3),
        (1, 3, 23, 23, 12, 7, 2, 3),
        (1, 16, 8, 13, 17, 3, 1, 1),
        // Channels not a multiple of any tile (67 rows: the 128-row tile), batch 1, 4×4 and
        // 7×7 maps.
        (1, 67, 4, 4, 67, 3, 1, 1),
        (2, 12, 7, 7, 67, 3, 1, 1),
        (1, 67, 7, 7, 12, 3, 2, 1),
        (2, 9, 7, 7, 10, 3, 1, 0),
        (4, 3, 32, 32, 8, 3, 1, 1),
        // Long weight-gradient reductions (N·OH·OW = 8192: split over many slices).
        (8, 16, 32, 32, 8, 3, 1, 1),
        (2, 8, 31, 31, 16, 3, 2, 1),
        (2, 128, 4, 4, 130, 3, 1, 1),
    ];
    let families = kernel_families("conv2d");
    for (n, c, h, w, o, k, s, p) in cases {
        let (mut r, seed) = rng();
        let cfg = conv2d::Conv2d::new(s, p);
        let d = cfg.dims(&[n, c, h, w], &[o, c, k, k]).unwrap();
        let x = randn(&mut r, n * c * h * w);
        let wt = randn(&mut r, o * c * k * k);
        let gy = randn(&mut r, n * o * d.oh * d.ow);
        let cpu = |data: &[f32], shape: &[usize]| t(data, shape, &Device::Cpu);
        let (xc, wc, gyc) = (
            cpu(&x, &[n, c, h, w]),
            cpu(&wt, &[o, c, k, k]),
            cpu(&gy, &[n, o, d.oh, d.ow]),
        );
        let y_cpu = v(&conv2d::forward(&xc, &wc, cfg).unwrap());
        let gx_cpu = v(&conv2d::backward_input(&gyc, &wc, &d).unwrap());
        let gw_cpu = v(&conv2d::backward_weight(&gyc, &xc, &d).unwrap());
        let tol = |len: usize| 1e-5 * (len as f64).sqrt() * 2.0;
        for (g, tiles) in &families {
            let (xg, wg, gyg) = (
                t(&x, &[n, c, h, w], g),
                t(&wt, &[o, c, k, k], g),
                t(&gy, &[n, o, d.oh, d.ow], g),
            );
            // Every tile, and the adapter's choice with column tiles carried by grid z.
            for (tile, grid_x) in tiles.iter().map(|&t| (t, None)).chain([(None, Some(2))]) {
                let lbl = format!(
                    "conv2d x[{n},{c},{h},{w}] w[{o},{c},{k},{k}] s{s} p{p} on {g:?} tiles {tile:?} grid x ≤ {grid_x:?} seed {seed}"
                );
                let limited = |f: &dyn Fn()| match grid_x {
                    Some(x) => gemm::with_grid_x_limit(x, f),
                    None => f(),
                };
                limited(&|| {
                    tiled(tile, || {
                        assert_close(
                            &format!("{lbl} y"),
                            &v(&conv2d::forward(&xg, &wg, cfg).unwrap()),
                            &y_cpu,
                            tol(c * k * k),
                            1e-4,
                        );
                        assert_close(
                            &format!("{lbl} grad_x"),
                            &v(&conv2d::backward_input(&gyg, &wg, &d).unwrap()),
                            &gx_cpu,
                            tol(o * k * k),
                            1e-4,
                        );
                        assert_close(
                            &format!("{lbl} grad_w"),
                            &v(&conv2d::backward_weight(&gyg, &xg, &d).unwrap()),
                            &gw_cpu,
                            tol(n * d.oh * d.ow),
                            1e-4,
                        );
                    })
                });
            }
        }
    }
}

/// Shift elements of `x` [N, C, S...] so that every input of the ReLU after BN (train: batch
/// statistics, eval: the running ones; γ, β; plus `residual`) is at least 1e-3 from 0.
fn away_from_relu_kinks(
    x: &mut [f32],
    shape: &[usize],
    train: bool,
    (rm, rv): (&[f32], &[f32]),
    (gamma, beta): (&[f32], &[f32]),
    residual: Option<&[f32]>,
) {
    let (n, c) = (shape[0], shape[1]);
    let s: usize = shape[2..].iter().product();
    for _ in 0..10 {
        let (mean, var) = if train {
            let (m, v) =
                batchnorm::stats_ref(&x.iter().map(|&v| v as f64).collect::<Vec<_>>(), n, c, s);
            (
                m.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                v.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            )
        } else {
            (rm.to_vec(), rv.to_vec())
        };
        let mut moved = false;
        for (e, xe) in x.iter_mut().enumerate() {
            let ch = e / s % c;
            let scale = gamma[ch] / (var[ch] + 1e-5).sqrt();
            let pre = (*xe - mean[ch]) * scale + beta[ch] + residual.map_or(0.0, |r| r[e]);
            if pre.abs() < 1e-3 {
                *xe += 3e-3f32.copysign(pre) / scale;
                moved = true;
            }
        }
        if !moved {
            return;
        }
    }
    panic!("could not move the ReLU inputs away from 0");
}

/// How `batchnorm_train_eval_and_grads` builds its op.
#[derive(Clone, Copy, Debug, PartialEq)]
enum BnKind {
    Plain,
    /// relu(BN(x)) as one op.
    FusedRelu,
    /// relu(BN(x) + residual) as one op.
    FusedResidual,
    /// relu(BN(x) + residual) as three ops (what the fused op must equal).
    Unfused,
}

#[test]
fn batchnorm_train_eval_and_grads() {
    // Tolerances: y and grad_x atol 1e-4 (normalised values are O(1)); sums over M = N·H·W
    // values (grad_gamma, grad_beta) atol 4e-5·√M; running statistics 1e-5.
    let Some(g) = gpu() else { return };
    for (shape, offset) in [
        (vec![3usize, 7, 5, 5], 0.5),
        (vec![8, 6], 0.5),
        (vec![32, 64, 4, 4], 0.5),
        (vec![2, 3, 1, 1], 0.5),
        // 9,216 values per channel: three workgroups' partial statistics merged; a large mean
        // (a one-pass E[x²] − E[x]² in f32 would lose the variance).
        (vec![4, 3, 48, 48], 0.5),
        (vec![4, 2, 48, 48], 300.0),
    ] {
        for affine in [true, false] {
            for train in [true, false] {
                for kind in [
                    BnKind::Plain,
                    BnKind::FusedRelu,
                    BnKind::FusedResidual,
                    BnKind::Unfused,
                ] {
                    let (mut r, seed) = rng();
                    let c = shape[1];
                    let n: usize = shape.iter().product();
                    // (Six values after a ReLU may all be zero: nothing to compare.)
                    if n < 64 && kind != BnKind::Plain {
                        continue;
                    }
                    let mut x: Vec<f32> =
                        randn(&mut r, n).iter().map(|v| v * 2.0 + offset).collect();
                    let gamma = randn(&mut r, c);
                    let beta = randn(&mut r, c);
                    let rm: Vec<f32> = randn(&mut r, c).iter().map(|v| v + offset).collect();
                    let rv: Vec<f32> = randn(&mut r, c).iter().map(|v| v.abs() + 0.5).collect();
                    let res = randn(&mut r, n);
                    let gy = randn(&mut r, n);
                    if kind != BnKind::Plain {
                        // A ReLU input within rounding of 0 may take either side on the two
                        // devices (an O(1) gradient difference, not a kernel error): move x
                        // until every input is at least 1e-3 from the kink.
                        let with_res = kind != BnKind::FusedRelu;
                        let ones = vec![1.0; c];
                        let g_ = if affine { &gamma } else { &ones };
                        let b_ = if affine { beta.clone() } else { vec![0.0; c] };
                        away_from_relu_kinks(
                            &mut x,
                            &shape,
                            train,
                            (&rm, &rv),
                            (g_, &b_),
                            with_res.then_some(&res[..]),
                        );
                    }
                    let run = |d: &Device, kind: BnKind| {
                        let mut rmt = t(&rm, &[c], d);
                        let mut rvt = t(&rv, &[c], d);
                        let mut tape = viewcraft::Tape::new();
                        let xv = tape.param(t(&x, &shape, d));
                        let resv = tape.param(t(&res, &shape, d));
                        let (gv, bv) = if affine {
                            (
                                Some(tape.param(t(&gamma, &[c], d))),
                                Some(tape.param(t(&beta, &[c], d))),
                            )
                        } else {
                            (None, None)
                        };
                        let cfg = batchnorm::BatchNorm::default();
                        let (rmt_, rvt_) = (&mut rmt, &mut rvt);
                        let y = match kind {
                            BnKind::Plain => tape.batch_norm(xv, gv, bv, rmt_, rvt_, cfg, train),
                            BnKind::FusedRelu => tape.batch_norm_relu(
                                xv,
                                gv,
                                bv,
                                rmt_,
                                rvt_,
                                cfg,
                                (train, train),
                                None,
                            ),
                            BnKind::FusedResidual => tape.batch_norm_relu(
                                xv,
                                gv,
                                bv,
                                rmt_,
                                rvt_,
                                cfg,
                                (train, train),
                                Some(resv),
                            ),
                            BnKind::Unfused => {
                                let y =
                                    tape.batch_norm(xv, gv, bv, rmt_, rvt_, cfg, train).unwrap();
                                let s = tape.add(y, resv).unwrap();
                                tape.relu(s)
                            }
                        }
                        .unwrap();
                        let yv = v(tape.value(y));
                        let grads = tape.backward_with(y, t(&gy, &shape, d)).unwrap();
                        let pg = if affine {
                            [
                                v(grads.get(gv.unwrap()).unwrap()),
                                v(grads.get(bv.unwrap()).unwrap()),
                            ]
                        } else {
                            [vec![], vec![]]
                        };
                        let gres = grads.get(resv).map(v).unwrap_or_default();
                        (yv, v(grads.get(xv).unwrap()), pg, v(&rmt), v(&rvt), gres)
                    };
                    let cc = run(&Device::Cpu, kind);
                    // The fused op against the three ops it replaces, and each on the GPU
                    // against the CPU.
                    let mut pairs = vec![(run(&g, kind), "gpu")];
                    if kind == BnKind::FusedResidual {
                        pairs.push((run(&Device::Cpu, BnKind::Unfused), "cpu unfused"));
                    }
                    let m = (n / c) as f64;
                    for (gg, what) in pairs {
                        let lbl = format!(
                            "batch_norm {shape:?} affine {affine} train {train} {kind:?} ({what} vs cpu) seed {seed}"
                        );
                        assert_close(&format!("{lbl} y"), &gg.0, &cc.0, 1e-4, 1e-4);
                        assert_close(&format!("{lbl} grad_x"), &gg.1, &cc.1, 1e-4, 1e-3);
                        assert_close(&format!("{lbl} grad_residual"), &gg.5, &cc.5, 1e-5, 1e-5);
                        if affine {
                            for (i, name) in ["grad_gamma", "grad_beta"].iter().enumerate() {
                                assert_close(
                                    &format!("{lbl} {name}"),
                                    &gg.2[i],
                                    &cc.2[i],
                                    1e-5 * m.sqrt() * 4.0,
                                    1e-4,
                                );
                            }
                        }
                        assert_close(&format!("{lbl} running_mean"), &gg.3, &cc.3, 1e-5, 1e-5);
                        assert_close(&format!("{lbl} running_var"), &gg.4, &cc.4, 1e-5, 1e-4);
                    }
                }
            }
        }
    }
}

#[test]
fn pooling() {
    let Some(g) = gpu() else { return };
    for (shape, cfg) in [
        (
            [2usize, 3, 9, 9],
            pool::MaxPool {
                k: 3,
                stride: 2,
                pad: 1,
            },
        ),
        (
            [3, 7, 5, 5],
            pool::MaxPool {
                k: 3,
                stride: 2,
                pad: 1,
            },
        ),
        (
            [2, 4, 16, 16],
            pool::MaxPool {
                k: 2,
                stride: 2,
                pad: 0,
            },
        ),
        (
            [1, 2, 7, 6],
            pool::MaxPool {
                k: 3,
                stride: 1,
                pad: 1,
            },
        ),
    ] {
        let (mut r, seed) = rng();
        let n: usize = shape.iter().product();
        // ReLU-like inputs: many exact ties at 0 exercise the first-maximum rule.
        let x: Vec<f32> = randn(&mut r, n).iter().map(|v| v.max(0.0)).collect();
        let (xc, xg) = both(&x, &shape, &g);
        let (yc, ic) = pool::max_pool(&xc, cfg).unwrap();
        let (yg, ig) = pool::max_pool(&xg, cfg).unwrap();
        let lbl = format!("max_pool {shape:?} {cfg:?} seed {seed}");
        assert_close(&format!("{lbl} y"), &v(&yg), &v(&yc), 0.0, 0.0);
        assert_eq!(v(&ig), v(&ic), "{lbl} argmax");
        let (gyc, gyg) = both(&randn(&mut r, yc.numel()), yc.shape(), &g);
        assert_close(
            &format!("{lbl} grad_x"),
            &v(&pool::max_pool_backward(&gyg, &ig, &shape, cfg).unwrap()),
            &v(&pool::max_pool_backward(&gyc, &ic, &shape, cfg).unwrap()),
            1e-6,
            1e-6,
        );

        let (xc, xg) = both(&randn(&mut r, n), &shape, &g);
        let lbl = format!("global_avg_pool {shape:?} seed {seed}");
        assert_close(
            &format!("{lbl} y"),
            &v(&pool::global_avg_pool(&xg).unwrap()),
            &v(&pool::global_avg_pool(&xc).unwrap()),
            1e-6,
            1e-5,
        );
        let (gyc, gyg) = both(&randn(&mut r, shape[0] * shape[1]), &shape[..2], &g);
        assert_close(
            &format!("{lbl} grad_x"),
            &v(&pool::global_avg_pool_backward(&gyg, &shape).unwrap()),
            &v(&pool::global_avg_pool_backward(&gyc, &shape).unwrap()),
            1e-7,
            1e-6,
        );
    }
}

#[test]
fn l2_normalize_and_cosine() {
    let Some(g) = gpu() else { return };
    for (n, d) in [(1, 3), (5, 8), (64, 128), (7, 2048)] {
        let (mut r, seed) = rng();
        let (xc, xg) = both(&randn(&mut r, n * d), &[n, d], &g);
        let (gc, gg) = both(&randn(&mut r, n * d), &[n, d], &g);
        let lbl = format!("l2_normalize [{n},{d}] seed {seed}");
        assert_close(
            &format!("{lbl} y"),
            &v(&l2norm::l2_normalize(&xg).unwrap()),
            &v(&l2norm::l2_normalize(&xc).unwrap()),
            1e-6,
            1e-5,
        );
        assert_close(
            &format!("{lbl} grad_x"),
            &v(&l2norm::l2_normalize_backward(&xg, &gg).unwrap()),
            &v(&l2norm::l2_normalize_backward(&xc, &gc).unwrap()),
            1e-6,
            1e-4,
        );

        let b = randn(&mut r, n * d);
        let run = |dev: &Device| {
            let mut tape = viewcraft::Tape::new();
            let a = tape.param(if dev.is_gpu() { xg.clone() } else { xc.clone() });
            let bb = tape.param(t(&b, &[n, d], dev));
            let cs = tape.cosine_similarity(a, bb).unwrap();
            let l = tape.sum(cs).unwrap();
            let cv = v(tape.value(cs));
            let gr = tape.backward(l).unwrap();
            (cv, v(gr.get(a).unwrap()), v(gr.get(bb).unwrap()))
        };
        let (c, gp) = (run(&Device::Cpu), run(&g));
        assert_close(
            &format!("cosine [{n},{d}] seed {seed}"),
            &gp.0,
            &c.0,
            1e-6,
            1e-5,
        );
        assert_close(
            &format!("cosine grad_a [{n},{d}] seed {seed}"),
            &gp.1,
            &c.1,
            1e-6,
            1e-4,
        );
        assert_close(
            &format!("cosine grad_b [{n},{d}] seed {seed}"),
            &gp.2,
            &c.2,
            1e-6,
            1e-4,
        );
    }
}

#[test]
fn cross_entropy_fused() {
    let Some(g) = gpu() else { return };
    for (n, k) in [(1, 2), (5, 10), (64, 100), (3, 4097)] {
        let (mut r, seed) = rng();
        let logits: Vec<f32> = randn(&mut r, n * k).iter().map(|v| v * 3.0).collect();
        let labels: Vec<f32> = (0..n)
            .map(|i| ((i * 7 + seed as usize) % k) as f32)
            .collect();
        let (lc, lg) = both(&logits, &[n, k], &g);
        let (yc, yg) = both(&labels, &[n], &g);
        let (gc, gg) = both(&randn(&mut r, n), &[n], &g);
        let lbl = format!("cross_entropy [{n},{k}] seed {seed}");
        assert_close(
            &format!("{lbl} loss"),
            &v(&cross_entropy::cross_entropy_rows(&lg, &yg).unwrap()),
            &v(&cross_entropy::cross_entropy_rows(&lc, &yc).unwrap()),
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("{lbl} grad"),
            &v(&cross_entropy::cross_entropy_rows_backward(&lg, &yg, &gg).unwrap()),
            &v(&cross_entropy::cross_entropy_rows_backward(&lc, &yc, &gc).unwrap()),
            1e-6,
            1e-4,
        );
    }
}

#[test]
fn concat_slice_reshape() {
    let Some(g) = gpu() else { return };
    let (mut r, seed) = rng();
    let a = randn(&mut r, 3 * 5 * 2);
    let b = randn(&mut r, 4 * 5 * 2);
    let run = |d: &Device| {
        let mut tape = viewcraft::Tape::new();
        let av = tape.param(t(&a, &[3, 5, 2], d));
        let bv = tape.param(t(&b, &[4, 5, 2], d));
        let c = tape.concat(&[av, bv]).unwrap();
        let parts = tape.split(c, &[2, 5]).unwrap();
        let p0 = tape.flatten(parts[0]).unwrap();
        let p1 = tape.reshape(parts[1], &[5, 10]).unwrap();
        let s0 = tape.scale(p0, 2.0).unwrap();
        let s1 = tape.scale(p1, -3.0).unwrap();
        let both = tape.concat(&[s0, s1]).unwrap();
        let w = tape.input(t(
            &(0..70).map(|i| i as f32 * 0.1).collect::<Vec<_>>(),
            &[7, 10],
            d,
        ));
        let m = tape.mul(both, w).unwrap();
        let l = tape.sum(m).unwrap();
        let cv = v(tape.value(c));
        let gr = tape.backward(l).unwrap();
        (cv, v(gr.get(av).unwrap()), v(gr.get(bv).unwrap()))
    };
    let (c, gp) = (run(&Device::Cpu), run(&g));
    assert_close(&format!("concat seed {seed}"), &gp.0, &c.0, 0.0, 0.0);
    assert_close(
        &format!("concat/split grad a seed {seed}"),
        &gp.1,
        &c.1,
        1e-6,
        1e-6,
    );
    assert_close(
        &format!("concat/split grad b seed {seed}"),
        &gp.2,
        &c.2,
        1e-6,
        1e-6,
    );
    // The analytic value: d/da of Σ (2·a_flat ⊙ w_rows) etc.
    assert!((c.1[0] - 0.0).abs() < 1e-6 && (c.1[1] - 0.2).abs() < 1e-6);
}

#[test]
fn shape_errors_name_op_and_shapes() {
    let d = Device::Cpu;
    let a = t(&[1.0; 6], &[2, 3], &d);
    let b = t(&[1.0; 8], &[2, 4], &d);
    let e = linear::matmul(&a, &b).unwrap_err().to_string();
    assert!(
        e.contains("matmul") && e.contains("[2, 3]") && e.contains("[2, 4]"),
        "{e}"
    );
    let e = ew::add(&a, &b).unwrap_err().to_string();
    assert!(e.contains("add") && e.contains("[2, 3]"), "{e}");
    let x = t(&[1.0; 2 * 3 * 4 * 4], &[2, 3, 4, 4], &d);
    let w = t(&[1.0; 5 * 2 * 9], &[5, 2, 3, 3], &d);
    let e = conv2d::forward(&x, &w, conv2d::Conv2d::new(1, 1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("conv2d") && e.contains("[5, 2, 3, 3]"), "{e}");
    let e = shape_ops::concat(&[&a, &b]).unwrap_err().to_string();
    assert!(e.contains("concat"), "{e}");
    let labels = t(&[0.0, 7.0], &[2], &d);
    let e = cross_entropy::cross_entropy_rows(&a, &labels)
        .unwrap_err()
        .to_string();
    assert!(e.contains("label 7"), "{e}");
}

#[test]
fn info_nce_fused() {
    let Some(g) = gpu() else { return };
    use cross_entropy::NceMode;
    for (n, m, mode) in [
        (6, 6, NceMode::NtXent),
        (64, 64, NceMode::NtXent),
        (5, 21, NceMode::Moco { in_batch: 5 }),
        (32, 4128, NceMode::Moco { in_batch: 32 }),
        // Rows much longer than the kernel's 256-invocation workgroup (a row per workgroup).
        (48, 48 + 16384, NceMode::Moco { in_batch: 48 }),
        (
            3,
            3 + 257,
            NceMode::Keys {
                in_batch: 3,
                offset: 0,
            },
        ),
    ] {
        let (mut r, seed) = rng();
        let (sc, sg) = both(
            &randn(&mut r, n * m)
                .iter()
                .map(|v| v.clamp(-1.0, 1.0))
                .collect::<Vec<_>>(),
            &[n, m],
            &g,
        );
        let (gc, gg) = both(&randn(&mut r, n), &[n], &g);
        let lbl = format!("info_nce [{n},{m}] {mode:?} seed {seed}");
        assert_close(
            &format!("{lbl} loss"),
            &v(&cross_entropy::info_nce(&sg, mode, 5.0).unwrap()),
            &v(&cross_entropy::info_nce(&sc, mode, 5.0).unwrap()),
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("{lbl} grad"),
            &v(&cross_entropy::info_nce_backward(&sg, &gg, mode, 5.0).unwrap()),
            &v(&cross_entropy::info_nce_backward(&sc, &gc, mode, 5.0).unwrap()),
            1e-6,
            1e-4,
        );
    }
    assert!(
        cross_entropy::info_nce(
            &Tensor::zeros(&[3, 3], &Device::Cpu).unwrap(),
            cross_entropy::NceMode::NtXent,
            1.0
        )
        .is_err(),
        "odd NT-Xent size"
    );
}

/// The per-kernel profiler (`VIEWCRAFT_PROFILE=1` / `set_profiling`) attributes each dispatch
/// to its kernel and stops when switched off.
#[test]
fn profiler_times_each_kernel() {
    // Profiling switches every dispatch on the device to its own submit: a device of its own,
    // so that no other test's dispatches land in (or leave) this profile.
    let Some(g) = own_gpu("profiler", None) else {
        return;
    };
    let Device::Gpu(adapter) = &g else {
        unreachable!("an adapter device")
    };
    let (mut r, _) = rng();
    let x = t(&randn(&mut r, 2 * 8 * 8 * 8), &[2, 8, 8, 8], &g);
    let w = t(&randn(&mut r, 8 * 8 * 9), &[8, 8, 3, 3], &g);
    adapter.set_profiling(true);
    adapter.take_profile();
    let y = conv2d::forward(&x, &w, conv2d::Conv2d::new(1, 1)).unwrap();
    ew::add(&y, &y).unwrap().to_vec().unwrap();
    let p = adapter.take_profile();
    adapter.set_profiling(false);
    // The convolution runs in conv2d.wgsl (register tiles) or gemm.wgsl (workgroup tiles).
    for families in [&["conv2d.", "gemm.conv_forward"][..], &["elementwise."]] {
        assert!(
            p.iter().any(
                |(label, n, s)| families.iter().any(|f| label.starts_with(f))
                    && *n >= 1
                    && *s > 0.0
            ),
            "no {families:?} entry in the profile {p:?}"
        );
    }
    assert!(
        p.iter().all(|(_, n, s)| *n >= 1 && s.is_finite()),
        "profile entries without dispatches: {p:?}"
    );
    ew::add(&y, &y).unwrap().to_vec().unwrap();
    assert!(
        adapter.take_profile().is_empty(),
        "profiling continued after set_profiling(false)"
    );
}
