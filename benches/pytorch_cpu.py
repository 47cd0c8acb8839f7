#!/usr/bin/env python3
"""PyTorch CPU twin of `viewcraft bench --method single`: the anchor of issue 17's comparison.

One training step = ResNet-18 (CIFAR stem: 3x3 conv, stride 1, no max-pool) at base width
`--width` + a 10-way linear head, forward on one batch of fixed random 32x32 images,
cross-entropy, backward, SGD (lr 0.1, momentum 0.9, weight decay 1e-4). channels_last (oneDNN's
fast layout on CPU), `--threads` intra-op threads. Reports the median step like viewcraft's bench.

    python3 benches/pytorch_cpu.py --threads 2 --batch 32 --width 64 --steps 10 --json
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNet18Cifar(nn.Module):
    def __init__(self, width, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        blocks, cin = [], width
        for stage in range(4):
            cout = width << stage
            for i in range(2):
                blocks.append(Block(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    fmt = torch.contiguous_format if a.no_channels_last else torch.channels_last
    net = ResNet18Cifar(a.width, 10).to(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(a.batch, 3, 32, 32).to(memory_format=fmt)
    y = torch.arange(a.batch) % 10

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    step()  # warm-up (oneDNN primitive creation)
    times = []
    for _ in range(max(a.steps, 1)):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    secs = statistics.median(times)
    out = {
        "framework": f"pytorch {torch.__version__}",
        "threads": a.threads,
        "channels_last": not a.no_channels_last,
        "batch": a.batch,
        "width": a.width,
        "steps": a.steps,
        "seconds_per_step": secs,
        "images_per_s": a.batch / secs,
    }
    print(json.dumps(out) if a.json else f"{out['images_per_s']:.1f} img/s ({secs:.3f} s/step)")


if __name__ == "__main__":
    main()
