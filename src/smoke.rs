//! A short end-to-end run used as the default job until pre-training lands: a small
//! conv → BN → ReLU → pool → conv → BN → ReLU → global-pool → linear network trained with
//! plain SGD on a fixed synthetic task, with the first step's gradients compared against the
//! CPU reference path.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::error::{Error, Result};
use crate::ops::batchnorm::BatchNorm;
use crate::ops::conv2d::Conv2d;
use crate::ops::pool::MaxPool;
use crate::tensor::{Device, Tensor};
use crate::Tape;

struct Net {
    params: Vec<Tensor>,
    running: Vec<Tensor>,
}

const SHAPES: [&[usize]; 6] = [
    &[16, 3, 3, 3],
    &[16],
    &[16],
    &[32, 16, 3, 3],
    &[10, 32],
    &[10],
];

impl Net {
    fn new(dev: &Device) -> Result<Net> {
        let mut rng = StdRng::seed_from_u64(7);
        let mut params = Vec::new();
        for (i, s) in SHAPES.iter().enumerate() {
            params.push(match i {
                1 => Tensor::ones(s, dev)?,
                2 | 5 => Tensor::zeros(s, dev)?,
                _ => {
                    let fan_in: usize = s[1..].iter().product();
                    Tensor::randn(s, (2.0 / fan_in as f32).sqrt(), &mut rng, dev)?
                }
            });
        }
        let running = vec![
            Tensor::zeros(&[16], dev)?,
            Tensor::ones(&[16], dev)?,
            Tensor::zeros(&[32], dev)?,
            Tensor::ones(&[32], dev)?,
        ];
        Ok(Net { params, running })
    }

    /// One forward + backward; returns (loss var's tape, loss value tensor, gradients).
    fn step(&mut self, x: &Tensor, y: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let mut tape = Tape::new();
        let p: Vec<_> = self.params.iter().map(|t| tape.param(t.clone())).collect();
        let xv = tape.input(x.clone());
        let [rm1, rv1, rm2, rv2] = &mut self.running[..] else {
            unreachable!()
        };
        let bn = BatchNorm::default();
        let h = tape.conv2d(xv, p[0], Conv2d::new(1, 1))?;
        let h = tape.batch_norm(h, Some(p[1]), Some(p[2]), rm1, rv1, bn, true)?;
        let h = tape.relu(h)?;
        let h = tape.max_pool2d(
            h,
            MaxPool {
                k: 3,
                stride: 2,
                pad: 1,
            },
        )?;
        let h = tape.conv2d(h, p[3], Conv2d::new(2, 1))?;
        let h = tape.batch_norm(h, None, None, rm2, rv2, bn, true)?;
        let h = tape.relu(h)?;
        let h = tape.global_avg_pool(h)?;
        let logits = tape.linear(h, p[4], Some(p[5]))?;
        let loss = tape.cross_entropy(logits, y)?;
        let lv = tape.value(loss).clone();
        let grads = tape.backward(loss)?;
        let g = p
            .iter()
            .map(|&v| {
                grads
                    .get(v)
                    .cloned()
                    .ok_or_else(|| Error::Autograd("missing gradient".into()))
            })
            .collect::<Result<_>>()?;
        Ok((lv, g))
    }

    fn sgd(&mut self, grads: &[Tensor], lr: f32) -> Result<()> {
        for (p, g) in self.params.iter_mut().zip(grads) {
            let upd =
                crate::ops::elementwise::add(p, &crate::ops::elementwise::affine(g, -lr, 0.0)?)?;
            p.assign(&upd)?;
        }
        Ok(())
    }
}

/// A synthetic batch whose label is the brightest of ten fixed colour-patch positions.
fn batch(dev: &Device, seed: u64) -> Result<(Tensor, Tensor)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (n, hw) = (32, 16);
    let x = Tensor::randn(&[n, 3, hw, hw], 0.3, &mut rng, &Device::Cpu)?;
    let mut xv = x.to_vec()?;
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let l = (i * 7 + seed as usize) % 10;
        labels.push(l as f32);
        let (cy, cx) = (2 + (l / 5) * 7, 1 + (l % 5) * 3);
        for c in 0..3 {
            for dy in 0..3 {
                for dx in 0..2 {
                    xv[((i * 3 + c) * hw + cy + dy) * hw + cx + dx] += 2.0;
                }
            }
        }
    }
    Ok((
        Tensor::from_vec(xv, &[n, 3, hw, hw], dev)?,
        Tensor::from_vec(labels, &[n], dev)?,
    ))
}

pub fn run(dev: &Device, steps: usize) -> Result<()> {
    println!("viewcraft smoke run on {}", dev.name());
    println!(
        "(pre-training, evaluation and the embedded CIFAR-10 subset arrive with the next issues)"
    );
    // Parity of the first step against the CPU reference kernels (for an adapter and for
    // the fast CPU kernels alike).
    if dev.is_gpu() || !crate::ops::reference_kernels() {
        let (xc, yc) = batch(&Device::Cpu, 0)?;
        let (xg, yg) = batch(dev, 0)?;
        let (lc, gc) =
            crate::ops::with_reference_kernels(|| Net::new(&Device::Cpu)?.step(&xc, &yc))?;
        let (lg, gg) = Net::new(dev)?.step(&xg, &yg)?;
        let mut worst = (lg.item()? - lc.item()?).abs() / lc.item()?.abs().max(1e-6);
        for (a, b) in gg.iter().zip(&gc) {
            let (a, b) = (a.to_vec()?, b.to_vec()?);
            let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
            worst = worst.max(
                a.iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max)
                    / scale,
            );
        }
        println!("first step vs CPU reference: max normwise relative difference {worst:.2e}");
        if worst > 1e-3 {
            return Err(Error::Gpu(format!(
                "{}: gradients differ from the CPU reference ({worst:.2e})",
                dev.name()
            )));
        }
    }
    let mut net = Net::new(dev)?;
    let t0 = Instant::now();
    let mut first = None;
    let mut last = 0.0;
    for s in 0..steps {
        let (x, y) = batch(dev, s as u64 % 4)?;
        let (loss, grads) = net.step(&x, &y)?;
        net.sgd(&grads, 0.1)?;
        last = loss.item()?;
        if !last.is_finite() {
            return Err(Error::Gpu(format!("loss became {last} at step {s}")));
        }
        first.get_or_insert(last);
        println!("step {:3}  loss {last:.4}", s + 1);
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{steps} steps in {secs:.2} s ({:.1} img/s); loss {:.4} -> {last:.4}",
        (steps * 32) as f64 / secs,
        first.unwrap_or(last)
    );
    Ok(())
}
