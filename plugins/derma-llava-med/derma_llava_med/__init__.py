"""derma plugin: LLaVA-Med v1.5 on native transformers (zero-shot and LoRA)."""
