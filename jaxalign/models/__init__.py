"""Models: the Llama-style transformer and its presets; Hugging Face checkpoints in and out."""

from jaxalign.models.hf import load_hf, logits, save_hf
from jaxalign.models.transformer import PRESETS, ModelConfig, Transformer, model_config

__all__ = ["PRESETS", "ModelConfig", "Transformer", "load_hf", "logits", "model_config", "save_hf"]
