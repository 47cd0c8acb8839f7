#!/usr/bin/env python3
"""PyTorch CUDA twin of `viewcraft bench --json` (kernels) and `viewcraft bench --method M`
(training steps), for benches/gpu.sh's comparison table. fp32 with TF32 off (cuDNN and
cuBLAS), NCHW like viewcraft, cuDNN autotuning on (its best algorithm per shape).

Kernels: the ResNet-18 CIFAR convolutions viewcraft's kernel bench times (same list, same
names): forward, input gradient, weight gradient, each timed alone with CUDA events.
Steps: ResNet-18 CIFAR at base width 64 with each method's heads as viewcraft builds them
(SimCLR / MoCo v2: 2-layer projector to 128; MoCo: momentum encoder, queue max(4096, B);
BYOL: projector 512-512-128 with BN, predictor 128-512-128; SimSiam: 3-layer projector of the
feature width with BN, predictor 512-128-512), two views of fixed random 32x32 images, SGD
(momentum 0.9). Reports the median step (ms) after warm-up, like viewcraft's bench.

    python3 benches/pytorch_gpu.py --batch 32 --json
"""
import argparse
import json
import os
import statistics
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_cpu import ResNet18Cifar  # noqa: E402


def conv_shapes(batch):
    """(name, n, c, hw, o, k, stride, pad): the list in viewcraft's bench::kernel_suite."""
    out = [(f"stem 3->64 32x32 b{batch}", batch, 3, 32, 64, 3, 1, 1)]
    for c, hw in [(64, 32), (128, 16), (256, 8), (512, 4)]:
        out.append((f"{c}ch {hw}x{hw} b{batch}", batch, c, hw, c, 3, 1, 1))
    out.append((f"64->128 s2 32x32 b{batch}", batch, 64, 32, 128, 3, 2, 1))
    out.append((f"1x1 64->128 s2 32x32 b{batch}", batch, 64, 32, 128, 1, 2, 0))
    return out


def cuda_ms(fn, reps):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def kernels(batch, reps):
    dev = "cuda"
    out = []
    for name, n, c, hw, o, k, s, p in conv_shapes(batch):
        x = torch.randn(n, c, hw, hw, device=dev)
        w = torch.randn(o, c, k, k, device=dev)
        y = F.conv2d(x, w, stride=s, padding=p)
        gy = torch.randn_like(y)
        oh = y.shape[2]
        gflop = 2 * n * o * oh * oh * c * k * k * 1e-9
        runs = {
            "conv2d_forward": lambda: F.conv2d(x, w, stride=s, padding=p),
            "conv2d_backward_input": lambda: torch.nn.grad.conv2d_input(
                x.shape, w, gy, stride=s, padding=p
            ),
            "conv2d_backward_weight": lambda: torch.nn.grad.conv2d_weight(
                x, w.shape, gy, stride=s, padding=p
            ),
        }
        for kernel, fn in runs.items():
            ms = cuda_ms(fn, reps)
            out.append(
                {"kernel": kernel, "shape": name, "ms": ms, "gflops": gflop / (ms * 1e-3)}
            )
    a = torch.randn(512, 512, device=dev)
    ms = cuda_ms(lambda: a @ a, reps)
    out.append({"kernel": "matmul", "shape": "512x512x512", "ms": ms,
                "gflops": 2 * 512**3 * 1e-9 / (ms * 1e-3)})
    return out


def mlp(dims, bn_last=False):
    layers = []
    for i in range(len(dims) - 1):
        last = i == len(dims) - 2
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=last and not bn_last))
        if not last:
            layers += [nn.BatchNorm1d(dims[i + 1]), nn.ReLU(inplace=True)]
        elif bn_last:
            layers.append(nn.BatchNorm1d(dims[i + 1], affine=False))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    def __init__(self, width, head):
        super().__init__()
        self.backbone = ResNet18Cifar(width, 1)
        self.backbone.fc = nn.Identity()
        self.head = head

    def forward(self, x):
        return self.head(self.backbone(x))


def method_step(method, batch, width):
    dev = "cuda"
    feat = 8 * width
    x1 = torch.randn(batch, 3, 32, 32, device=dev)
    x2 = torch.randn(batch, 3, 32, 32, device=dev)
    if method in ("simclr", "moco"):
        proj = nn.Sequential(nn.Linear(feat, feat), nn.ReLU(inplace=True), nn.Linear(feat, 128))
        q = Encoder(width, proj).to(dev)
        params = list(q.parameters())
        if method == "moco":
            k = Encoder(width, nn.Sequential(nn.Linear(feat, feat), nn.ReLU(inplace=True),
                                             nn.Linear(feat, 128))).to(dev)
            k.load_state_dict(q.state_dict())
            queue = F.normalize(torch.randn(max(4096, batch), 128, device=dev), dim=1)
    elif method == "byol":
        q = Encoder(width, mlp([feat, 512, 128])).to(dev)
        pred = mlp([128, 512, 128]).to(dev)
        k = Encoder(width, mlp([feat, 512, 128])).to(dev)
        params = list(q.parameters()) + list(pred.parameters())
    elif method == "simsiam":
        q = Encoder(width, mlp([feat, feat, feat, feat], bn_last=True)).to(dev)
        pred = mlp([feat, 128, feat]).to(dev)
        params = list(q.parameters()) + list(pred.parameters())
    else:
        raise SystemExit(f"unknown method {method}")
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)

    def step():
        if method == "simclr":
            z = F.normalize(torch.cat([q(x1), q(x2)]), dim=1)
            sim = z @ z.t() / 0.5
            sim.fill_diagonal_(float("-inf"))
            n = batch
            labels = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(dev)
            loss = F.cross_entropy(sim, labels)
        elif method == "moco":
            qz = F.normalize(q(x1), dim=1)
            with torch.no_grad():
                for pk, pq in zip(k.parameters(), q.parameters()):
                    pk.mul_(0.999).add_(pq.detach(), alpha=0.001)
                kz = F.normalize(k(x2), dim=1)
            logits = torch.cat([(qz * kz).sum(1, keepdim=True), qz @ queue.t()], 1) / 0.2
            loss = F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long, device=dev))
        elif method == "byol":
            p1, p2 = pred(q(x1)), pred(q(x2))
            with torch.no_grad():
                for pk, pq in zip(k.parameters(), q.parameters()):
                    pk.mul_(0.996).add_(pq.detach(), alpha=0.004)
                t1, t2 = k(x1), k(x2)
            loss = (2 - 2 * F.cosine_similarity(p1, t2.detach()).mean()) + (
                2 - 2 * F.cosine_similarity(p2, t1.detach()).mean()
            )
        else:
            z1, z2 = q(x1), q(x2)
            p1, p2 = pred(z1), pred(z2)
            loss = -(F.cosine_similarity(p1, z2.detach()).mean()
                     + F.cosine_similarity(p2, z1.detach()).mean()) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    result = {"device": torch.cuda.get_device_name(0), "batch": a.batch,
              "kernels": kernels(a.batch, a.reps), "steps": {}}
    for m in ("simclr", "moco", "byol", "simsiam"):
        step = method_step(m, a.batch, a.width)
        for _ in range(3):
            step()
        result["steps"][m] = cuda_ms(step, a.steps)
    if a.json:
        print(json.dumps(result))
    else:
        for r in result["kernels"]:
            print(f"{r['kernel']:24} {r['shape']:28} {r['gflops']:9.1f} GFLOP/s {r['ms']:8.3f} ms")
        for m, ms in result["steps"].items():
            print(f"{m:8} step {ms:8.2f} ms")


if __name__ == "__main__":
    main()
