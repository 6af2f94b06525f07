"""Building blocks of the ORBIT ViT (architecture only)."""
from .aggregation import VariableAggregation
from .attention import Attention
from .block import Block
from .embeddings import LeadTimeEmbedding, sincos_pos_embed_2d, sinusoidal_features
from .tokenizer import VariablePatchEmbed, patchify

__all__ = [
    "Attention",
    "Block",
    "LeadTimeEmbedding",
    "VariableAggregation",
    "VariablePatchEmbed",
    "patchify",
    "sincos_pos_embed_2d",
    "sinusoidal_features",
]
