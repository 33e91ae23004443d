"""Configuration of a structurally pruned BERT exported by Espalier.

Written by `espalier export RUN_DIR --format hf-compact` beside the weights;
loaded by `transformers` with `trust_remote_code=True`. It is BERT's
configuration plus the number of attention heads and feed-forward units each
layer kept (`heads_per_layer`, `ffn_per_layer`); the head size stays
`hidden_size // num_attention_heads`.
"""

from transformers import BertConfig


class EspalierBertConfig(BertConfig):
    model_type = "espalier_bert"

    def __init__(self, heads_per_layer=None, ffn_per_layer=None, **kwargs):
        super().__init__(**kwargs)
        layers = self.num_hidden_layers
        self.heads_per_layer = list(heads_per_layer or [self.num_attention_heads] * layers)
        self.ffn_per_layer = list(ffn_per_layer or [self.intermediate_size] * layers)
        for key in ("heads_per_layer", "ffn_per_layer"):
            widths = getattr(self, key)
            if len(widths) != layers:
                raise ValueError(f"{key} has {len(widths)} entries, expected num_hidden_layers = {layers}")
            if any(w < 1 for w in widths):
                raise ValueError(f"{key} must be at least 1 in every layer, found {widths}")
