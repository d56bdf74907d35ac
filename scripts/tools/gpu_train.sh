#!/usr/bin/env bash
# One call of a lent GPU (the `device` tool), from the repository root, carrying .gpu (or PACK=DIR,
# another gpu_pack.py --out) and .whl
# (made here by `python scripts/tools/gpu_pack.py` and `pip download`, see docs/training.md).
#
# The encoder stays frozen (unless JOINT=1), so every index map, each K-means codebook and its
# prior, and the maps in .gpu/ stay valid; only what the small CPU runs left undertrained is
# trained again:
#   1. decoder + post_quant_conv with L1 + LPIPS-VGG, from the bundle (DEC_BLOCKS=3 / DEC_CH=64: the
#      decoder grown first, exactly: more capacity, same starting quality; README for what fits the
#      20 MB the default may take). With GAN_MIN > 0 the
#      PatchGAN stage (hinge loss, adaptive weight) follows from that decoder and comes back as
#      gan.safetensors, its own K <= 64 fine-tuned. It has not helped yet (README, "What limits
#      quality"), so it is measured before anything ships (DISC_WEIGHT sets its weight,
#      DISC_WARMUP the steps in which only the discriminator learns);
#   2. that decoder swapped into the K-means ladder; K <= 64 fine-tuned again for it;
#   3. the `ar` and `masked` concealment transformers for K=256 on the packed index maps; `ar`
#      then fine-tuned reading its own guesses at sampled lost positions (--corrupt; CORRUPT_MIN=0
#      skips it).
# JOINT=1 trains the encoder too (stage 1 from the bundle, unfrozen) and builds a new K-means ladder
# with priors on the packed crops instead of swapping a decoder in: the index maps change, so it
# needs KINDS=none here, and new maps (`gpu_pack.py --model BUNDLE --maps-only`, after the call) for
# the transformers; `vqnet codebook priors --shifts 0,8` then refits its crop-fitted priors on whole
# photos and their mirrors (the maps' encodings are reused from runs/prior-data).
# KINDS=none skips stage 3: a new decoder leaves every index map, so the transformers, valid.
# Stage 1 keeps post_quant_conv fixed too (FREEZE=encoder trains it): `masked` measures code
# distances after it, and run D's retrained one changed masked's choices for the worse.
# PRIORS_ONLY=1 skips stages 1-2 and trains the transformers for the bundled codec (or MODEL, say a
# JOINT=1 bundle, with MAPS packed for it), so only the maps and .whl need carrying; `ar` also comes
# back before its --corrupt fine-tune (ar-clean.K256.safetensors) so the two can be compared.
# Windows and masks are drawn ahead by worker processes (PRIOR_WORKERS, default up to 8): at batch
# 128 an H200 spent most of a `masked` step drawing masks. With them, larger PRIOR_BATCH costs
# little more time a step (not yet measured on a GPU).
# AR_START / MASKED_START=FILE continue that kind from a concealment file (at START_LR) instead of
# initialising it. Runs can share one call (say KINDS=ar and KINDS=masked, in the background) when
# each has its own RUN and OUT folders and all but the first set NO_WHEELS=1.
# With .gpu/val (gpu_pack.py --val-photos, or VAL=DIR) the decoder stages log a held-out loss and
# the ladder takes their best.pt, not the last step: one 256-px crop per photo overfits after
# ~2000 steps at batch 32 (a 3757-step run got better on its crops and worse on Kodak).
# Each stage has a wall-clock budget (minutes, env below) because the lease is fixed; everything
# the repo needs lands in $OUT (at most 8 files come back).
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu-out}
WARM_MIN=${WARM_MIN:-3.4} GAN_MIN=${GAN_MIN:-0} FT_MIN=${FT_MIN:-1.2} PRIOR_MIN=${PRIOR_MIN:-1.1}
AR_STEPS=${AR_STEPS:-5000} MASKED_STEPS=${MASKED_STEPS:-2000} PRIOR_BATCH=${PRIOR_BATCH:-128}
CORRUPT_MIN=${CORRUPT_MIN:-0.6} CORRUPT_STEPS=${CORRUPT_STEPS:-2000}
DEC_BATCH=${DEC_BATCH:-32} FT_BATCH=${FT_BATCH:-16} FT_IMAGES=${FT_IMAGES:-1500} CROP=${CROP:-224}
PACK=${PACK:-.gpu}
# A pack may travel as one tar of its train/ and val/ folders (PACK/pack.tar): the device refused
# .gpu-webp's 2880 small files as over 64 MiB, though their bytes were under it (README).
[ ! -f "$PACK/pack.tar" ] || tar xf "$PACK/pack.tar" -C "$PACK"
VAL=${VAL:-$([ -d "$PACK/val" ] && echo "$PACK/val" || true)} DEC_CH=${DEC_CH:-} DEC_BLOCKS=${DEC_BLOCKS:-} DISC_WEIGHT=${DISC_WEIGHT:-0.8} DISC_WARMUP=${DISC_WARMUP:-0} DEVICE=${DEVICE:-cuda} MAPS=${MAPS:-$PACK/maps-K256.safetensors} KINDS=${KINDS:-ar masked} DROPOUT=${DROPOUT:-0}
mkdir -p "$OUT"
exec > >(tee "$OUT/console.log") 2>&1

# NO_WHEELS=1: a dry run here, where the project's own environment already has them.
[ -n "${NO_WHEELS:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD"
export VQNET_VGG16_FP16=/tmp/vgg16-fp16.safetensors VQNET_CACHE_DIR=/tmp/vqnet-cache
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
vq() { python3 -m vqnet "$@"; }
RUN=${RUN:-runs/gpu}
rm -rf "$RUN" && mkdir -p "$RUN"
t0=$SECONDS

if [ -n "${JOINT:-}" ] && [ "$KINDS" != none ]; then
  echo "JOINT=1 changes every index map, so the transformers cannot train on the packed maps: set KINDS=none" >&2
  exit 2
fi
freeze=(--freeze "${FREEZE:-encoder,post_quant_conv}")
[ -z "${JOINT:-}" ] || freeze=()
train_decoder() {  # OUT_DIR INIT MINUTES DISC_START (the encoder trains too with JOINT=1)
  vq train vqgan --data "$PACK/train" --out "$1" --init "$2" "${freeze[@]}" --steps 1000000 --batch "$DEC_BATCH" \
    --crop "$CROP" --lr 1.5e-4 --disc-start "$4" --disc-weight "$DISC_WEIGHT" --disc-warmup "$DISC_WARMUP" \
    ${DEC_CH:+--decoder-ch "$DEC_CH"} \
    ${DEC_BLOCKS:+--decoder-blocks "$DEC_BLOCKS"} ${VAL:+--val "$VAL"} \
    --bf16 --device "$DEVICE" --minutes "$3"
}
chosen() {  # RUN_DIR: its lowest held-out-loss checkpoint when validated, else its last one
  if [ -f "$1/best.pt" ]; then echo "$1/best.pt"; else echo "$1/checkpoint.pt"; fi
}
swap_in() {  # CHECKPOINT OUT_BUNDLE: the new decoder in the K-means ladder, priors kept (maps unchanged)
  if [ -n "${JOINT:-}" ]; then  # new encoder: a new ladder, priors fitted on the packed crops
    vq codebook kmeans --checkpoint "$1" --out "$2" --data "$PACK/train" --ks 1024,512,256,128,64,32,16 \
      --images "$FT_IMAGES" --device "$DEVICE"
  else
    vq codebook decoder --model vqnet/models/default.safetensors --checkpoint "$1" --out "$2" --images 0 --kmeans-start
  fi
}
finetune() {  # BUNDLE OUT_BUNDLE: the paper's codebook fine-tuning of K <= 64 for that bundle's decoder
  vq codebook finetune --model "$1" --out "$2" --data "$PACK/train" --ks 64,32,16 --steps 1000000 \
    --batch "$FT_BATCH" --crop "$CROP" --lr 3e-4 --images "$FT_IMAGES" --device "$DEVICE" --minutes "$FT_MIN" -q
}
if [ -n "${PRIORS_ONLY:-}" ]; then
  cp "${MODEL:-vqnet/models/default.safetensors}" "$RUN/default.safetensors"
else
  # Written under a private name, then renamed: runs sharing a call may unpack it at the same time.
  python3 -c "import lzma, os, pathlib; t = pathlib.Path('$VQNET_VGG16_FP16.' + str(os.getpid())); t.write_bytes(lzma.decompress(pathlib.Path('$PACK/vgg16-fp16.safetensors.xz').read_bytes())); os.replace(t, '$VQNET_VGG16_FP16')"
  train_decoder "$RUN/dec-warm" vqnet/models/default.safetensors "$WARM_MIN" 100000000
  swap_in "$(chosen "$RUN/dec-warm")" "$RUN/swapped.safetensors"
  echo "stage 1 done at $((SECONDS - t0)) s"
  if [ "$GAN_MIN" != 0 ]; then
    train_decoder "$RUN/dec-gan" "$(chosen "$RUN/dec-warm")" "$GAN_MIN" 0
    swap_in "$(chosen "$RUN/dec-gan")" "$RUN/gan-swapped.safetensors"
    finetune "$RUN/gan-swapped.safetensors" "$OUT/gan.safetensors"
    echo "GAN stage done at $((SECONDS - t0)) s"
  fi
  finetune "$RUN/swapped.safetensors" "$RUN/default.safetensors"
  cp "$RUN/default.safetensors" "$OUT/"
  echo "stage 2 done at $((SECONDS - t0)) s"
fi

[ "$KINDS" != none ] || KINDS=""
for kind in $KINDS; do
  steps=$AR_STEPS init=taming from=${AR_START:-} start=() lr=1e-3
  [ "$kind" = masked ] && steps=$MASKED_STEPS init=codes from=${MASKED_START:-}
  [ -z "$from" ] || start=(--start "$from") lr=${START_LR:-5e-4}
  vq train prior --kind "$kind" --K 256 --model "$RUN/default.safetensors" --maps "$MAPS" \
    --out "$RUN/prior-$kind" --steps "$steps" --batch "$PRIOR_BATCH" --layers 4 --heads 4 --embd 128 --lr "$lr" \
    --init "$init" "${start[@]}" --dropout "$DROPOUT" --device "$DEVICE" --minutes "$PRIOR_MIN" \
    ${PRIOR_WORKERS:+--workers "$PRIOR_WORKERS"}
  if [ "$kind" = ar ] && [ "$CORRUPT_MIN" != 0 ]; then  # overwrites the file it starts from, after reading it
    [ -z "${PRIORS_ONLY:-}" ] || cp "$RUN/default.ar.K256.safetensors" "$OUT/ar-clean.K256.safetensors"
    vq train prior --kind ar --K 256 --model "$RUN/default.safetensors" --maps "$MAPS" --out "$RUN/prior-ar-corrupt" \
      --start "$RUN/default.ar.K256.safetensors" --corrupt --steps "$CORRUPT_STEPS" --batch "$PRIOR_BATCH" \
      --layers 4 --heads 4 --embd 128 --lr 2e-4 --init taming --dropout "$DROPOUT" --device "$DEVICE" \
      --minutes "$CORRUPT_MIN" ${PRIOR_WORKERS:+--workers "$PRIOR_WORKERS"}
  fi
  cp "$RUN/default.$kind.K256.safetensors" "$OUT/"
  echo "$kind done at $((SECONDS - t0)) s"
done
tar czf "$OUT/logs.tgz" "$RUN"/*/log.csv $(ls "$RUN"/*/val.csv 2>/dev/null)
