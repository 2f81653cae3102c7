"""A tiny nanoGPT-style decoder that returns an UNREDUCED per-token loss: the only transformer in the package.

The model never averages anything: ``forward`` returns a (B, T) loss map so the caller
(the reduction schemes in this package) decides how tokens, sequences and batches are weighted.
The same blocks serve training (SFT, the RL policy with ``GPTConfig(tie_head=False)``) and sampling: pass a
``KVCache`` to ``forward`` and each call runs only the new tokens against the cached keys and values.

Written to work with ``torch.func``: no in-place ops on inputs and no data-dependent Python
control flow in ``forward`` (only shape checks), so ``functional_call``, ``vmap(grad(...))``
for per-sample gradients and ``stack_module_state`` + ``vmap`` over model copies all work.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

IGNORE_INDEX = -100  # targets equal to this get loss 0 (same default as F.cross_entropy)


def _sdpa_backend():
    """Inside torch.func transforms (vmap, grad) pin SDPA to its MATH backend.

    The fused CPU flash kernel has no vmap batching rule, so torch would fall back to a slow
    per-sample loop and warn; the math backend is made of batchable ops. Outside transforms the
    fastest kernel is chosen as usual. (The check is a private torch helper: if it ever disappears we
    simply skip the pinning, which is still correct, only slower and noisier.)
    """
    active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)()
    if active:
        return sdpa_kernel([SDPBackend.MATH])
    return contextlib.nullcontext()


@dataclass
class GPTConfig:
    vocab_size: int = 264  # tokens in the vocabulary (byte-level 256 + a few specials)
    context_len: int = 128  # max tokens per row; longer inputs raise ValueError
    n_layer: int = 2  # number of transformer blocks
    n_head: int = 4  # attention heads per block; must divide d_model
    d_model: int = 64  # residual stream width (embedding size)
    dropout: float = 0.0  # dropout on attention weights and residual branches (train mode only)
    bias: bool = True  # bias in Linear layers and LayerNorms
    tie_head: bool = True  # output head = token embedding (nanoGPT); False: a separate (V, C) matrix `lm_head`


TINY = GPTConfig()


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.d_model % cfg.n_head != 0:
            raise ValueError(f"d_model={cfg.d_model} must be divisible by n_head={cfg.n_head}")
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)  # residual projection
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None,
                cache: LayerCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        causal = True
        if cache is not None:  # decoding: attend to every cached position plus the new ones
            k, v = cache.extend(k, v)  # (B, nh, T_past + T, hs)
            causal = T > 1  # one new token may see all keys; several come only with an empty cache (the prompt)
        p = self.dropout if self.training else 0.0
        with _sdpa_backend():
            if attn_mask is None:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal)  # (B, nh, T, hs)
            else:  # attn_mask: (B, 1, T, T) bool, broadcast over heads
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads re-assembled
        return self.resid_drop(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=cfg.bias)  # residual projection
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.c_fc(x))  # (B, T, 4C)
        return self.drop(self.c_proj(h))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None,
                cache: LayerCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask, cache)  # pre-norm residual
        return x + self.mlp(self.ln_2(x))


class LayerCache:
    """One block's keys and values of the positions seen so far, (B, nh, T_past, hs) each."""

    def __init__(self):
        self.k = self.v = None

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v


class KVCache:
    """Keys and values of every block, for sampling one token at a time (`GPT.forward(..., cache=...)`)."""

    def __init__(self, n_layer: int):
        self.layers = [LayerCache() for _ in range(n_layer)]

    @property
    def length(self) -> int:
        """Positions already cached (the position of the next token)."""
        first = self.layers[0].k
        return 0 if first is None else first.shape[2]

    def expand(self, n: int) -> KVCache:
        """A cache of one row (a shared prompt) seen as n identical rows, without copying."""
        for layer in self.layers:
            layer.k, layer.v = layer.k.expand(n, -1, -1, -1), layer.v.expand(n, -1, -1, -1)
        return self


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig = TINY):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)  # token embedding
        self.wpe = nn.Embedding(cfg.context_len, cfg.d_model)  # learned position embedding
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.apply(self._init_weights)
        # GPT-2 style: scale residual projections so the residual stream variance stays O(1) with depth.
        for name, prm in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(prm, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        # Untied head (the RL policy): its own (V, C) matrix, made last so the other weights' init is unchanged.
        self.lm_head = None if cfg.tie_head else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(logits, per_token_loss)``.

        idx: (B, T) long token ids.
        targets: optional (B, T) long; entries equal to IGNORE_INDEX get loss exactly 0.
        attn_mask: optional (B, T, T) or (B, 1, T, T) bool, True = query may attend to key. It must
            already include causality (e.g. the block-diagonal causal mask of packed rows). The diagonal
            is OR-ed in, so a query row that is all False (padding) attends to itself instead of
            producing NaN from a softmax over nothing. None -> plain causal attention.
        positions: optional (B, T) long position ids (packed rows restart at 0 per conversation);
            values must be < context_len. None -> arange(T) for every row (after the cached positions).
        cache: optional KVCache; idx are then the tokens after the cached ones (the prompt into an empty cache,
            then one token per call), and the cache is extended in place. No attn_mask with a cache.

        logits: (B, T, vocab_size). per_token_loss: (B, T) UNREDUCED cross-entropy, or None
        without targets.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T), got shape {tuple(idx.shape)}")
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.context_len:
            raise ValueError(f"sequence length {start + T} exceeds context_len {self.cfg.context_len}")
        if cache is not None and (attn_mask is not None or (start > 0 and T > 1)):
            raise ValueError("with a cache: no attn_mask, and one token per call after the prompt")
        if positions is None:
            positions = torch.arange(start, start + T, device=idx.device)  # (T,), broadcasts over B
        elif positions.shape != idx.shape:
            raise ValueError(f"positions shape {tuple(positions.shape)} != idx shape {tuple(idx.shape)}")
        if attn_mask is not None:
            if attn_mask.dtype != torch.bool:
                raise ValueError(f"attn_mask must be bool (True = may attend), got {attn_mask.dtype}")
            if attn_mask.dim() == 3:
                attn_mask = attn_mask.unsqueeze(1)  # (B, 1, T, T)
            if attn_mask.shape[-2:] != (T, T) or attn_mask.dim() != 4:
                raise ValueError(f"attn_mask must be (B, T, T) or (B, 1, T, T), got {tuple(attn_mask.shape)}")
            # The one place the diagonal is added: every query sees at least itself -> no NaN from padding rows.
            attn_mask = attn_mask | torch.eye(T, dtype=torch.bool, device=idx.device)  # new tensor

        x = self.drop(self.wte(idx) + self.wpe(positions))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, attn_mask, cache.layers[i] if cache is not None else None)  # (B, T, C)
        x = self.ln_f(x)
        # Tied head: the token embedding itself, one (V, C) matrix "wte.weight". Using it directly (rather than
        # a second nn.Linear sharing the Parameter) keeps the tie intact under .to("meta"),
        # stack_module_state and functional_call, which can silently untie shared Parameters.
        logits = F.linear(x, self.wte.weight) if self.lm_head is None else self.lm_head(x)  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
        )  # (B*T,)
        return logits, loss.view(B, T)  # (B, T)


def num_params(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())
