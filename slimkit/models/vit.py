"""A small Vision Transformer for 1x28x28 inputs: patch embedding, MHA, MLP, LayerNorm.

Attention keeps separate q/k/v projections and reads the head count from `num_heads` at run time,
so structured pruning can remove whole heads by slicing q/k/v rows and proj columns and lowering
`num_heads`; the residual width (`dim`) is coupled through every block and the LayerNorms.
"""

import torch
from torch import nn

from slimkit.errors import SlimkitError


class Attention(nn.Module):
    """Multi-head self-attention with per-head width `head_dim`; heads can be removed individually."""

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None) -> None:
        super().__init__()
        head_dim = head_dim or dim // num_heads
        if head_dim < 1 or num_heads < 1:
            raise SlimkitError(f"Attention needs num_heads >= 1 and head_dim >= 1, got {num_heads}, {head_dim}")
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.q = nn.Linear(dim, inner)
        self.k = nn.Linear(dim, inner)
        self.v = nn.Linear(dim, inner)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h, d = self.num_heads, self.head_dim
        q = self.q(x).reshape(b, n, h, d).transpose(1, 2)
        k = self.k(x).reshape(b, n, h, d).transpose(1, 2)
        v = self.v(x).reshape(b, n, h, d).transpose(1, 2)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * d**-0.5, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, h * d)
        return self.proj(out)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(LN(x)), then x + MLP(LN(x))."""

    removable = True

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class SmallViT(nn.Module):
    """ViT with a class token and learned position embeddings; `config()` gives constructor kwargs."""

    # Parameters used outside any layer, with the dimension that follows the residual width: the
    # structured pruner slices them along it when the residual stream is pruned.
    unwrapped_parameters = {"cls_token": -1, "pos_embed": -1}
    # By default the pruner leaves the residual width alone: cutting it changes every LayerNorm's
    # mean and variance, so it is not a removal of unused channels. Heads and MLP neurons are cut.
    structured_ignored = ("patch_embed",)

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, patch: int = 4,
                 dim: int = 64, depth: int = 4, num_heads: int = 4, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if input_size % patch:
            raise SlimkitError(f"input_size {input_size} must be divisible by patch {patch}")
        if dim % num_heads:
            raise SlimkitError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self._config = {"num_classes": int(num_classes), "in_channels": int(in_channels), "input_size": int(input_size),
                        "patch": int(patch), "dim": int(dim), "depth": int(depth), "num_heads": int(num_heads),
                        "mlp_ratio": float(mlp_ratio)}
        tokens = (input_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def config(self) -> dict:
        return dict(self._config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])
