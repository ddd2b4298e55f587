"""The sequence risk network: a small causal transformer over a scope's request vectors.

Input per position t (one request of a scope, oldest first):
  feats  float32[B, T, F]   the request's feature vector (moat.models.feature_spec)
  tokens int64[B, T, K]     hashed token ids of its newest prompt text, 0 = padding
  mask   float32[B, T]      1 for real requests, 0 for padding
Output: a risk logit at every position. Attention is causal, so position t sees only requests
up to t: one forward pass trains on every prefix, and serving reads the last position.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers import BertConfig, BertModel

from moat.models.feature_spec import N_FEATURES, N_TOKENS, TOKEN_VOCAB, WINDOW


@dataclass(frozen=True)
class NetConfig:
    """The network's one definition: training configures it as `TrainConfig.net`, checkpoints
    and bundles (meta.json `net`) record it."""

    # d=32 with 2 layers: about 0.15M parameters, most of them the token table. Serving runs
    # one window per scope for every request, so compute per window is the budget (about
    # 50 us on one CPU thread); the hand-built features carry most of the signal.
    hidden: int = 32
    layers: int = 2
    heads: int = 4
    ffn: int = 64
    dropout: float = 0.1
    # Input sizes: the feature spec's, recorded so a checkpoint rebuilds the net it was trained
    # as. Not a training choice: a net of other sizes could not read serving's windows.
    INPUT_FIELDS: ClassVar[tuple[str, ...]] = ("token_vocab", "n_features", "n_tokens", "window")
    token_vocab: int = TOKEN_VOCAB
    n_features: int = N_FEATURES
    n_tokens: int = N_TOKENS
    window: int = WINDOW

    def as_dict(self) -> dict:
        return asdict(self)


class RiskNet(nn.Module):
    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # Numeric features are already scaled to about [0, 1]; LayerNorm after the projection
        # keeps their mix stable when one feature family dominates a batch.
        self.feat_proj = nn.Sequential(nn.Linear(cfg.n_features, cfg.hidden), nn.GELU(), nn.LayerNorm(cfg.hidden))
        # A bag of hashed token ids: content without a tokenizer to download, and the model can
        # learn words like "step by step" or "translate" without seeing raw text in state.
        self.tok_emb = nn.Embedding(cfg.token_vocab, cfg.hidden, padding_idx=0)
        # Small initial rows (BERT's 0.02, not N(0, 1)): a hashed bucket that training never saw
        # (real words the simulator never wrote) must add next to nothing, not a random vector
        # as large as the whole feature projection.
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        with torch.no_grad():
            self.tok_emb.weight[0].zero_()
        # The training data's per-feature range; inputs are clipped to it, so the network never
        # extrapolates to values it was not trained on (a real prompt longer than any simulated
        # one reads as the longest seen, not as a value some untrained weight scales up).
        # Training sets it from its windows (`set_input_range`); it is exported with the weights.
        self.register_buffer("input_lo", torch.full((cfg.n_features,), -1e4))
        self.register_buffer("input_hi", torch.full((cfg.n_features,), 1e4))
        # The encoder comes from a `transformers` config with no downloaded weights. BERT's own
        # position embeddings (absolute, up to `window`) tell the model how deep into the scope
        # history a request sits. Eager attention exports cleanly to ONNX.
        bert_cfg = BertConfig(
            vocab_size=2,  # unused: we feed inputs_embeds
            hidden_size=cfg.hidden,
            num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads,
            intermediate_size=cfg.ffn,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
            max_position_embeddings=cfg.window,
            type_vocab_size=1,
            attn_implementation="eager",
        )
        self.encoder = BertModel(bert_cfg, add_pooling_layer=False)
        self.head = nn.Linear(cfg.hidden, 1)

    def set_input_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.input_lo.copy_(lo)
        self.input_hi.copy_(hi)

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        feats = torch.minimum(torch.maximum(feats, self.input_lo), self.input_hi)
        # Mean over real tokens; padding id 0 embeds to the zero vector, so a plain sum suffices.
        count = (tokens > 0).sum(-1, keepdim=True).clamp(min=1).to(feats.dtype)
        tok = self.tok_emb(tokens).sum(2) / count  # [B, T, H]
        x = self.feat_proj(feats) + tok
        t = feats.shape[1]
        # Causal and key-padding masks built here as an additive 4D mask: a form BertModel takes
        # as is, so the exported graph carries no library-specific mask logic.
        causal = torch.tril(torch.ones(t, t, dtype=feats.dtype, device=feats.device))
        allowed = causal.unsqueeze(0) * mask.unsqueeze(1)  # [B, T(query), T(key)]
        additive = (1.0 - allowed).unsqueeze(1) * torch.finfo(feats.dtype).min
        h = self.encoder(inputs_embeds=x, attention_mask=additive).last_hidden_state
        return self.head(h).squeeze(-1)  # [B, T] logits


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
