"""CRPS, the parametric half: contrasts become verified reasoning chains (synthesis), chains
become fine-tuning data (export), data becomes a LoRA adapter (finetune), and an adapter is
adopted only if it does not lose accuracy on held-out tasks (adapters, gate)."""
