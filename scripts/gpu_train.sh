#!/usr/bin/env bash
# One call of a lent GPU (the `device` tool), from the repository root, carrying .gpu and .whl
# (made here by `python scripts/gpu_pack.py` and `pip download`, see README "Training on a GPU").
#
# The encoder stays frozen, so every index map, each K-means codebook and its prior, and the maps
# in .gpu/ stay valid; only what the small CPU runs left undertrained is trained again:
#   1. decoder + post_quant_conv with taming's loss (L1 + LPIPS-VGG + PatchGAN), from the bundle;
#   2. swapped into the K-means ladder; K <= 64 fine-tuned again for the new decoder;
#   3. the `ar` and `masked` concealment transformers for K=256 on the packed index maps.
# Each stage has a wall-clock budget (minutes, env below) because the lease is fixed; everything
# the repo needs lands in $OUT (at most 8 files come back).
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu-out}
DEC_MIN=${DEC_MIN:-3.8} FT_MIN=${FT_MIN:-1.3} PRIOR_MIN=${PRIOR_MIN:-1.2}
AR_STEPS=${AR_STEPS:-5000} MASKED_STEPS=${MASKED_STEPS:-2200} PRIOR_BATCH=${PRIOR_BATCH:-128}
DEC_BATCH=${DEC_BATCH:-32} FT_BATCH=${FT_BATCH:-16} FT_IMAGES=${FT_IMAGES:-1500} CROP=${CROP:-224}
DEVICE=${DEVICE:-cuda} MAPS=${MAPS:-.gpu/maps-K256.safetensors}
mkdir -p "$OUT"
exec > >(tee "$OUT/console.log") 2>&1

# NO_WHEELS=1: a dry run here, where the project's own environment already has them.
[ -n "${NO_WHEELS:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD"
python3 -c "import lzma, pathlib; pathlib.Path('/tmp/vgg16-fp16.safetensors').write_bytes(lzma.decompress(pathlib.Path('.gpu/vgg16-fp16.safetensors.xz').read_bytes()))"
export VQNET_VGG16_FP16=/tmp/vgg16-fp16.safetensors VQNET_CACHE_DIR=/tmp/vqnet-cache
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
vq() { python3 -m vqnet "$@"; }
RUN=runs/gpu
rm -rf "$RUN" && mkdir -p "$RUN"
t0=$SECONDS

vq train vqgan --data .gpu/train --out "$RUN/dec" --init vqnet/models/default.safetensors --freeze encoder \
  --steps 1000000 --batch "$DEC_BATCH" --crop "$CROP" --lr 1.5e-4 --disc-start 0 --bf16 --device "$DEVICE" --minutes "$DEC_MIN"
echo "stage 1 done at $((SECONDS - t0)) s"; cp "$RUN/dec/log.csv" "$OUT/dec-log.csv"

vq codebook decoder --model vqnet/models/default.safetensors --checkpoint "$RUN/dec/checkpoint.pt" \
  --out "$RUN/swapped.safetensors" --images 0 --kmeans-start
vq codebook finetune --model "$RUN/swapped.safetensors" --out "$RUN/default.safetensors" --data .gpu/train \
  --ks 64,32,16 --steps 1000000 --batch "$FT_BATCH" --crop "$CROP" --images "$FT_IMAGES" --device "$DEVICE" --minutes "$FT_MIN" -q
cp "$RUN/default.safetensors" "$OUT/"
echo "stage 2 done at $((SECONDS - t0)) s"

for kind in ar masked; do
  steps=$AR_STEPS init=taming; [ "$kind" = masked ] && steps=$MASKED_STEPS init=codes
  vq train prior --kind "$kind" --K 256 --model "$RUN/default.safetensors" --maps "$MAPS" \
    --out "$RUN/prior-$kind" --steps "$steps" --batch "$PRIOR_BATCH" --layers 4 --heads 4 --embd 128 --lr 1e-3 \
    --init "$init" --device "$DEVICE" --minutes "$PRIOR_MIN"
  cp "$RUN/default.$kind.K256.safetensors" "$OUT/"; cp "$RUN/prior-$kind/log.csv" "$OUT/$kind-log.csv"
  echo "$kind done at $((SECONDS - t0)) s"
done
