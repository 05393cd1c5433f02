"""Models: the Llama-style transformer and its presets."""

from jaxalign.models.transformer import PRESETS, ModelConfig, Transformer, model_config

__all__ = ["PRESETS", "ModelConfig", "Transformer", "model_config"]
