"""A structurally pruned BERT exported by Espalier, for `transformers`.

`BertModel` / `BertForSequenceClassification` with each encoder layer's
attention and feed-forward linear maps resized to the widths the layer kept
(`config.heads_per_layer` heads of size `hidden_size // num_attention_heads`,
`config.ffn_per_layer` intermediate units). Nothing else changes: the
computation of every layer is stock BERT's on fewer heads and units, so the
pruned model runs faster in PyTorch as it does in Espalier. Load with
`AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)`.
"""

from torch import nn
from transformers import BertForSequenceClassification, BertModel

from .configuration_espalier_bert import EspalierBertConfig


def _resize_layers(bert, config):
    """Replaces each layer's linear maps by ones of the kept widths (their
    weights come from the checkpoint)."""
    hidden = config.hidden_size
    head_size = hidden // config.num_attention_heads
    layers = bert.encoder.layer
    for layer, heads, units in zip(layers, config.heads_per_layer, config.ffn_per_layer):
        attn = layer.attention.self
        inner = heads * head_size
        attn.query = nn.Linear(hidden, inner)
        attn.key = nn.Linear(hidden, inner)
        attn.value = nn.Linear(hidden, inner)
        # transformers 4.x reshapes with these; 5.x infers the head count.
        attn.num_attention_heads = heads
        attn.all_head_size = inner
        layer.attention.output.dense = nn.Linear(inner, hidden)
        layer.intermediate.dense = nn.Linear(hidden, units)
        layer.output.dense = nn.Linear(units, hidden)


class EspalierBertModel(BertModel):
    config_class = EspalierBertConfig

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        _resize_layers(self, config)


class EspalierBertForSequenceClassification(BertForSequenceClassification):
    config_class = EspalierBertConfig

    def __init__(self, config):
        super().__init__(config)
        _resize_layers(self.bert, config)
