//! `cargo bench`: the ResNet-18 CIFAR convolutions (forward, input gradient, weight gradient)
//! at batch 32 and a 512³ matmul on the selected device (VIEWCRAFT_DEVICE, default `gpu`: any adapter).
//! Every kernel is first validated against the CPU reference and reported with GPU timestamps
//! where the adapter has them; criterion then measures wall time per call (a batch of calls
//! recorded into one submission, so the device is kept busy) with throughput in GFLOP/s
//! (criterion prints it as "Gelem/s").

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use viewcraft::bench::{conv_inputs, kernel_suite, resnet18_cifar_convs, run_conv, CONV_KERNELS};
use viewcraft::ops::{linear, saliency_mask};
use viewcraft::tensor::{Device, Tensor};

fn device() -> Device {
    viewcraft::cli::select_device_or(None, "gpu").expect("a device")
}

fn timed(dev: &Device, iters: u64, mut f: impl FnMut() -> Tensor) -> Duration {
    dev.sync().expect("sync");
    let t0 = Instant::now();
    for _ in 0..iters {
        f();
    }
    dev.sync().expect("sync");
    t0.elapsed()
}

fn kernels(c: &mut Criterion) {
    let dev = device();
    println!("device: {}", dev.name());
    println!("validated kernels (one timed batch each):");
    for r in kernel_suite(&dev, 2, 32).expect("kernels validate against the CPU reference") {
        let ts = r
            .gpu_seconds
            .map(|s| format!("  [{:.2} ms by GPU timestamps]", s * 1e3))
            .unwrap_or_default();
        println!(
            "  {:24} {:18} {:8.2} GFLOP/s{ts}",
            r.kernel, r.shape, r.gflops
        );
    }
    let mut group = c.benchmark_group("kernels");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4));
    for (name, d) in resnet18_cifar_convs(32) {
        let [x, w, gy] = conv_inputs(&d, &dev).expect("inputs");
        for kernel in CONV_KERNELS {
            group.throughput(Throughput::Elements(2 * d.macs() as u64));
            group.bench_function(format!("{kernel}/{name}"), |b| {
                b.iter_custom(|iters| {
                    timed(&dev, iters, || {
                        run_conv(kernel, &x, &w, &gy, &d).expect("conv")
                    })
                })
            });
        }
    }
    let n = 512;
    let mut rng = rand::rng();
    let a = Tensor::randn(&[n, n], 1.0, &mut rng, &dev).expect("a");
    let b2 = Tensor::randn(&[n, n], 1.0, &mut rng, &dev).expect("b");
    group.throughput(Throughput::Elements(2 * (n * n * n) as u64));
    group.bench_function("matmul/512x512x512", |b| {
        b.iter_custom(|iters| timed(&dev, iters, || linear::matmul(&a, &b2).expect("matmul")))
    });
    // Saliency-guided masking of one batch of 256 CIFAR views (8×8 cells) from layer-4
    // features [256, 512, 4, 4]: cell saliency, cell masks, masked views.
    let (nb, g) = (256, 8);
    let feat = Tensor::randn(&[nb, 512, 4, 4], 1.0, &mut rng, &dev).expect("features");
    let x = Tensor::randn(&[nb, 3, 32, 32], 1.0, &mut rng, &dev).expect("views");
    let plans: Vec<f32> = (0..nb)
        .flat_map(|i| {
            let mut row = vec![(i % 3) as f32, 0.2, 1.0, 2.0];
            row.extend((0..3 * g * g).map(|c| ((c * 37 + i) % (g * g)) as f32));
            row
        })
        .collect();
    let plan = Tensor::from_vec(plans, &[nb, saliency_mask::plan_len(g)], &dev).expect("plans");
    let rule = saliency_mask::MaskRule {
        positive: true,
        cap: true,
        focal_side: 29,
    };
    group.throughput(Throughput::Elements(nb as u64));
    group.bench_function("saliency_mask/256x32x32 (images)", |b| {
        b.iter_custom(|iters| {
            timed(&dev, iters, || {
                saliency_mask::mask_views(&x, &feat, &x, &plan, g, rule).expect("mask")
            })
        })
    });
    group.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
