#!/usr/bin/env bash
# The hardware-GPU check (issue 16): GPU tests, kernel and training-step benchmarks, and the
# same workloads in PyTorch CUDA where it is installed, in one table. For a machine with a GPU
# and no Rust toolchain: the release binaries are built and bundled here, and travel with the
# checkout.
#
#   benches/gpu.sh --stage            # here: build, bundle the binaries into target/gpu-bundle.tar.gz
#   benches/gpu.sh [BUNDLE]           # there, from the repository root (default: that bundle;
#                                     # carry it, and .gl/ where the machine lacks libvulkan)
#
# Environment: VIEWCRAFT_DEVICE (default auto: the best hardware adapter), GPU_SH_QUICK=1
# (batch 32 only), GPU_SH_WIDTH / GPU_SH_STEPS (step benchmarks: width 64, 5 steps; smaller
# for a trial run on a software adapter). Results go to stdout and to $OUT (or target/gpu-results) as JSON. Aims to
# finish in under 8 minutes on a current GPU.
set -uo pipefail
cd "$(dirname "$0")/.."

# The test binaries that exercise the GPU without spawning the CLI.
GPU_TESTS="ops_parity resnet methods gpu_errors ssl_losses saliency_mask moco clsa pytorch_fixtures heatmap_box optim"
BUNDLE_DEFAULT=target/gpu-bundle.tar.gz

if [ "${1:-}" = "--stage" ]; then
    set -e
    cargo build --release
    cargo test --release --no-run 2>/dev/null
    stage=$(mktemp -d)
    mkdir -p "$stage/tests"
    cp target/release/viewcraft "$stage/"
    for t in $GPU_TESTS; do
        # The newest executable of that test target (cargo leaves older hashes behind).
        bin=$(ls -t target/release/deps/"$t"-* 2>/dev/null | grep -v '\.d$' | head -1)
        [ -n "$bin" ] || { echo "no test binary for $t" >&2; exit 2; }
        cp "$bin" "$stage/tests/$t"
    done
    strip "$stage"/viewcraft "$stage"/tests/* 2>/dev/null || true
    # Tests find their fixtures under the path they were compiled in.
    pwd >"$stage/manifest_dir"
    tar -C "$stage" -czf "$BUNDLE_DEFAULT" .
    rm -rf "$stage"
    echo "bundle: $BUNDLE_DEFAULT ($(du -h "$BUNDLE_DEFAULT" | cut -f1)); carry it and run benches/gpu.sh there"
    exit 0
fi

bundle="${1:-$BUNDLE_DEFAULT}"
[ -f "$bundle" ] || { echo "no bundle at $bundle: run benches/gpu.sh --stage first" >&2; exit 2; }
bin=$(mktemp -d)
tar -C "$bin" -xzf "$bundle"
manifest=$(cat "$bin/manifest_dir")
if [ "$manifest" != "$PWD" ] && [ ! -e "$manifest" ]; then
    mkdir -p "$(dirname "$manifest")" && ln -s "$PWD" "$manifest"
fi
out="${OUT:-target/gpu-results}"
mkdir -p "$out"
export VIEWCRAFT_DEVICE="${VIEWCRAFT_DEVICE:-auto}"
# A machine without the Vulkan loader: the packages carried in .gl/ (see the device README:
# `apt-get download libvulkan1 ...` into .gl here).
if ! ldconfig -p 2>/dev/null | grep -q libvulkan && ls .gl/*.deb >/dev/null 2>&1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
# Vulkan on NVIDIA machines whose loader finds no ICD by itself.
nv_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nv_icd" ]; then
    export VK_DRIVER_FILES="$nv_icd"
fi
vc="$bin/viewcraft"
start=$(date +%s)
status=0

echo "== adapters"
"$vc" devices || status=2

echo "== GPU tests (on the hardware adapter, its kernel family)"
for t in $GPU_TESTS; do
    if VIEWCRAFT_TEST_DEVICE="$VIEWCRAFT_DEVICE" CI=true timeout 300 "$bin/tests/$t" -q >"$out/test-$t.log" 2>&1; then
        echo "  $t: $(grep -E '^test result' "$out/test-$t.log" | tail -1)"
    else
        echo "  $t: FAILED (see $out/test-$t.log)"; tail -20 "$out/test-$t.log"; status=1
    fi
done

batches="32 256"
[ "${GPU_SH_QUICK:-0}" = 1 ] && batches=32
for b in $batches; do
    echo "== kernels, batch $b"
    timeout 240 "$vc" --device "$VIEWCRAFT_DEVICE" bench --json --reps 10 --batch "$b" >"$out/kernels-b$b.json" || status=1
    for m in simclr moco byol simsiam; do
        timeout 240 "$vc" --device "$VIEWCRAFT_DEVICE" bench --json --method "$m" --batch "$b" \
            --width "${GPU_SH_WIDTH:-64}" --steps "${GPU_SH_STEPS:-5}" \
            >"$out/step-$m-b$b.json" || { echo "  $m step bench failed"; status=1; }
    done
    if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
        timeout 300 python3 benches/pytorch_gpu.py --batch "$b" --width "${GPU_SH_WIDTH:-64}" --json >"$out/torch-b$b.json" || status=1
    fi
done

python3 - "$out" $batches <<'EOF' || cat "$out"/*.json
import json, os, sys
out, batches = sys.argv[1], sys.argv[2:]
def load(name):
    p = os.path.join(out, name)
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
for b in batches:
    k, t = load(f"kernels-b{b}.json"), load(f"torch-b{b}.json")
    if k is None:
        continue
    print(f"\n{k['device']} vs {t['device'] if t else '(no PyTorch CUDA)'} — batch {b}")
    print(f"{'kernel':24} {'shape':30} {'viewcraft GFLOP/s':>18} {'family/tile':>20} {'torch GFLOP/s':>14} {'ratio':>6}")
    tk = {(r['kernel'], r['shape']): r for r in (t or {}).get('kernels', [])}
    for r in k['kernels']:
        ref = tk.get((r['kernel'], r['shape']))
        ratio = f"{r['gflops'] / ref['gflops']:.2f}" if ref else "-"
        fam = r.get('family', '?') + (' ' + r['tile'] if r.get('tile') else '')
        print(f"{r['kernel']:24} {r['shape']:30} {r['gflops']:18.1f} {fam:>20} {ref['gflops'] if ref else float('nan'):14.1f} {ratio:>6}")
    print(f"{'method':10} {'viewcraft ms/step':>18} {'torch ms/step':>14} {'torch/viewcraft':>16}")
    for m in ["simclr", "moco", "byol", "simsiam"]:
        s = load(f"step-{m}-b{b}.json")
        if s is None:
            continue
        ms = s['seconds_per_step'] * 1e3
        tm = (t or {}).get('steps', {}).get(m)
        print(f"{m:10} {ms:18.2f} {tm if tm else float('nan'):14.2f} {tm / ms if tm else float('nan'):16.2f}")
EOF
echo "== done in $(( $(date +%s) - start )) s (results in $out)"
exit $status
