"""Fine-tuning on CoT + correction data (LoRA + DeepSpeed), checkpoints in the store, launcher and evaluation."""
