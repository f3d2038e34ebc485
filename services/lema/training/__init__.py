"""Fine-tuning on CoT + correction data (LoRA, DeepSpeed), checkpoints in the store, the Kubernetes launcher and evaluation."""
