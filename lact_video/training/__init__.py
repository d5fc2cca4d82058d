"""Finetuning Wan2.1 into an autoregressive LaCT model; `finetune/*.py` are thin callers of this package.

- `trainer`: the training entry point (`main`): models, data, optimizer, the loop, export;
- `config`: the typed config tree of the trainer (`FinetuneConfig`), its parsing and checks;
- `validate`: the per-chunk validation loss of saved checkpoints, side by side;
- `flow_matching`: the objective as pure functions (timesteps, shift, noising, per-chunk loss);
- `sampling`: which sample each process reads at each step (exact, cheap resumption);
- `trainable`: trainable modules and optimizer groups, by module type;
- `ema`: an EMA of the weights that keeps each rank's ZeRO-3 slice;
- `checkpointing`: atomic checkpoints, `latest`, pruning;
- `export`: the diffusers pipeline folder of a trained model (and of `lact_video.convert`);
- `distributed`: accelerate/DeepSpeed set-up on machines with and without CUDA.
"""
