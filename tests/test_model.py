"""Tests for the tiny GPT in lossreduce_demo.model."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, stack_module_state, vmap

from lossreduce_demo.config import default_device, set_torch_threads
from lossreduce_demo.model import (
    GPT,
    IGNORE_INDEX,
    TINY,
    GPTConfig,
    KVCache,
    num_params,
)

SMALL = GPTConfig(vocab_size=40, context_len=16, n_layer=2, n_head=2, d_model=16)


def make_model(cfg: GPTConfig = SMALL, seed: int = 0, dtype: torch.dtype = torch.float32) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg).to(dtype).eval()


def rand_batch(B: int, T: int, vocab: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (B, T), generator=g)
    tgt = torch.randint(0, vocab, (B, T), generator=g)
    return idx, tgt


def test_config_defaults():
    assert TINY == GPTConfig()
    assert (TINY.vocab_size, TINY.context_len, TINY.n_layer, TINY.n_head, TINY.d_model) == (
        264,
        128,
        2,
        4,
        64,
    )
    assert TINY.dropout == 0.0 and TINY.bias is True
    assert IGNORE_INDEX == -100


def test_shapes_and_no_targets():
    m = make_model()
    idx, tgt = rand_batch(3, 7, SMALL.vocab_size)
    logits, loss = m(idx)
    assert logits.shape == (3, 7, SMALL.vocab_size) and loss is None
    logits, loss = m(idx, tgt)
    assert logits.shape == (3, 7, SMALL.vocab_size)
    assert loss.shape == (3, 7) and loss.dtype == torch.float32
    assert torch.isfinite(loss).all()


def test_weight_tying_and_num_params():
    m = make_model()
    names = [n for n, _ in m.named_parameters()]
    assert "wte.weight" in names
    assert not any("lm_head" in n for n in names)  # output head reuses wte.weight, no second matrix
    # Gradient of the logits reaches wte.weight through both the embedding and the head.
    idx, tgt = rand_batch(2, 5, SMALL.vocab_size)
    m(idx, tgt)[1].sum().backward()
    unused = set(range(SMALL.vocab_size)) - set(idx.flatten().tolist())
    row = next(iter(unused))  # a token never fed in still gets gradient via the tied head
    assert m.wte.weight.grad[row].abs().sum() > 0
    V, C, L, Tm = SMALL.vocab_size, SMALL.d_model, SMALL.n_layer, SMALL.context_len
    per_block = 2 * (2 * C) + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    assert num_params(m) == V * C + Tm * C + L * per_block + 2 * C


def test_untied_head_adds_one_matrix_and_keeps_the_other_weights():
    untied_cfg = GPTConfig(**{**vars(SMALL), "tie_head": False})
    tied, untied = make_model(), make_model(untied_cfg)
    assert num_params(untied) == num_params(tied) + SMALL.vocab_size * SMALL.d_model
    for (name, p), (name2, q) in zip(tied.named_parameters(), untied.named_parameters()):
        assert name == name2 and torch.equal(p, q)  # same init: the head is created last
    idx, tgt = rand_batch(2, 5, SMALL.vocab_size)
    untied(idx, tgt)[1].sum().backward()
    unused = next(iter(set(range(SMALL.vocab_size)) - set(idx.flatten().tolist())))
    assert untied.wte.weight.grad[unused].abs().sum() == 0  # the output no longer reaches the embedding
    assert untied.lm_head.weight.grad[unused].abs().sum() > 0


@pytest.mark.parametrize("tie_head", [True, False])
def test_kv_cache_decoding_equals_the_full_forward(tie_head):
    """The prompt into an empty cache, then one token per call: the same logits as one forward on everything."""
    model = make_model(GPTConfig(**{**vars(SMALL), "tie_head": tie_head}), dtype=torch.float64)
    idx, _ = rand_batch(3, 12, SMALL.vocab_size)
    full, _ = model(idx)
    cache = KVCache(SMALL.n_layer)
    steps = [model(idx[:, :5], cache=cache)[0]]
    for t in range(5, 12):
        assert cache.length == t
        steps.append(model(idx[:, t:t + 1], cache=cache)[0])
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="one token per call"):
        model(idx[:, :2], cache=cache)
    shared = KVCache(SMALL.n_layer)
    model(idx[:1, :5], cache=shared)
    shared.expand(3)  # one prompt, three continuations
    torch.testing.assert_close(model(idx[:, 5:6], cache=shared)[0][:, 0],
                               model(torch.cat([idx[:1, :5].expand(3, 5), idx[:, 5:6]], 1))[0][:, -1],
                               rtol=0, atol=1e-12)


def test_init_is_nanogpt_style():
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=8))
    std_proj = m.blocks[0].attn.c_proj.weight.std().item()
    std_fc = m.blocks[0].mlp.c_fc.weight.std().item()
    assert abs(std_fc - 0.02) < 0.002
    assert abs(std_proj - 0.02 / 4.0) < 0.001  # 0.02 / sqrt(2 * 8)
    assert m.blocks[0].mlp.c_fc.bias.abs().max() == 0


def test_deterministic_given_seed():
    idx, tgt = rand_batch(2, 9, SMALL.vocab_size)
    a = make_model(seed=3)(idx, tgt)[1]
    b = make_model(seed=3)(idx, tgt)[1]
    c = make_model(seed=4)(idx, tgt)[1]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_per_token_loss_matches_cross_entropy_and_ignore_index():
    m = make_model(dtype=torch.float64)
    idx, tgt = rand_batch(3, 8, SMALL.vocab_size)
    tgt[0, :3] = IGNORE_INDEX
    tgt[2, -1] = IGNORE_INDEX
    logits, loss = m(idx, tgt)
    assert loss.dtype == torch.float64
    ignored = tgt == IGNORE_INDEX
    assert (loss[ignored] == 0).all()
    assert (loss[~ignored] > 0).all()
    # By hand: -log softmax at the target, on kept positions only.
    logp = torch.log_softmax(logits, dim=-1)
    safe = tgt.clamp_min(0)
    by_hand = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1) * (~ignored)
    torch.testing.assert_close(loss, by_hand, rtol=0, atol=1e-12)
    ref = F.cross_entropy(logits.reshape(-1, SMALL.vocab_size), tgt.reshape(-1), reduction="none")
    torch.testing.assert_close(loss, ref.view(3, 8), rtol=0, atol=1e-12)
    # Unreduced: the caller's mean over kept tokens equals the library's default reduction.
    torch.testing.assert_close(
        loss.sum() / (~ignored).sum(), F.cross_entropy(logits.reshape(-1, SMALL.vocab_size), tgt.reshape(-1))
    )


@pytest.mark.parametrize("use_mask", [False, True])
def test_causal(use_mask: bool):
    m = make_model(dtype=torch.float64)
    T, t = 10, 6
    idx, _ = rand_batch(1, T, SMALL.vocab_size)
    idx2 = idx.clone()
    idx2[0, t] = (idx[0, t] + 1) % SMALL.vocab_size
    mask = torch.ones(1, T, T, dtype=torch.bool).tril() if use_mask else None
    a = m(idx, attn_mask=mask)[0]
    b = m(idx2, attn_mask=mask)[0]
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-12)
    assert (a[:, t:] - b[:, t:]).abs().amax(dim=-1).min() > 1e-6  # every later position does change
    if use_mask:  # an explicit lower-triangular mask is the same as is_causal
        torch.testing.assert_close(a, m(idx)[0], rtol=0, atol=1e-12)


def block_diag_causal(lengths: list[int]) -> torch.Tensor:
    T = sum(lengths)
    seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    return (seg[:, None] == seg[None, :]) & torch.ones(T, T, dtype=torch.bool).tril()


def test_block_diagonal_mask_isolates_segments():
    m = make_model(dtype=torch.float64)
    L1, L2 = 5, 7
    idx, tgt = rand_batch(1, L1 + L2, SMALL.vocab_size)
    mask = block_diag_causal([L1, L2])[None]  # (1, T, T)
    pos = torch.cat([torch.arange(L1), torch.arange(L2)])[None]  # positions restart per segment
    logits, loss = m(idx, tgt, attn_mask=mask, positions=pos)

    other = idx.clone()
    other[0, :L1] = (idx[0, :L1] + 3) % SMALL.vocab_size  # change every token of segment 1
    logits2, _ = m(other, attn_mask=mask, positions=pos)
    torch.testing.assert_close(logits[:, L1:], logits2[:, L1:], rtol=0, atol=1e-12)
    assert not torch.allclose(logits[:, :L1], logits2[:, :L1])

    # Segment 2 inside the packed row == segment 2 alone, with default positions 0..L2-1.
    alone_logits, alone_loss = m(idx[:, L1:], tgt[:, L1:])
    torch.testing.assert_close(logits[:, L1:], alone_logits, rtol=0, atol=1e-12)
    torch.testing.assert_close(loss[:, L1:], alone_loss, rtol=0, atol=1e-12)
    # The (B, 1, T, T) form gives the same answer as (B, T, T).
    torch.testing.assert_close(m(idx, attn_mask=mask[:, None], positions=pos)[0], logits, rtol=0, atol=0)


def test_all_false_mask_row_is_finite():
    m = make_model()
    T = 6
    idx, tgt = rand_batch(2, T, SMALL.vocab_size)
    mask = torch.ones(2, T, T, dtype=torch.bool).tril()
    mask[:, -2:, :] = False  # two padding queries that may attend to nothing
    logits, loss = m(idx, tgt, attn_mask=mask)
    assert torch.isfinite(logits).all() and torch.isfinite(loss).all()
    loss.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_too_long_and_bad_inputs_raise_valueerror():
    m = make_model()
    idx = torch.zeros(1, SMALL.context_len + 1, dtype=torch.long)
    with pytest.raises(ValueError, match=rf"{SMALL.context_len + 1}.*{SMALL.context_len}"):
        m(idx)
    m(idx[:, : SMALL.context_len])  # exactly context_len is fine
    with pytest.raises(ValueError):
        m(torch.zeros(4, dtype=torch.long))  # missing batch dim
    with pytest.raises(ValueError):
        m(idx[:, :4], positions=torch.arange(3)[None])
    with pytest.raises(ValueError):
        m(idx[:, :4], attn_mask=torch.ones(1, 4, 4))  # float mask rejected


def test_per_sample_grads_vmap_equal_loop():
    m = make_model(dtype=torch.float64)
    B, T = 4, 8
    idx, tgt = rand_batch(B, T, SMALL.vocab_size)
    tgt[1, :5] = IGNORE_INDEX
    mask = torch.stack([block_diag_causal([3, 5]), block_diag_causal([8])] * 2)  # (B, T, T)
    pos = torch.stack([torch.cat([torch.arange(3), torch.arange(5)]), torch.arange(8)] * 2)  # (B, T)
    params = {k: v.detach() for k, v in m.named_parameters()}

    def sample_loss(p, x, y, mk, ps):  # one sample: x, y, ps (T,), mk (T, T)
        _, loss = functional_call(m, p, (x[None], y[None]), {"attn_mask": mk[None], "positions": ps[None]})
        return loss.sum()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "batching rule" fallback warning from SDPA
        per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0, 0, 0))(params, idx, tgt, mask, pos)

    for i in range(B):
        m.zero_grad()
        _, loss = m(idx[i : i + 1], tgt[i : i + 1], attn_mask=mask[i : i + 1], positions=pos[i : i + 1])
        loss.sum().backward()
        for name, prm in m.named_parameters():
            assert per_sample[name].shape == (B, *prm.shape)
            torch.testing.assert_close(per_sample[name][i], prm.grad, rtol=0, atol=1e-10)


def test_per_sample_grads_default_causal_path():
    m = make_model(dtype=torch.float64)
    idx, tgt = rand_batch(3, 6, SMALL.vocab_size)
    params = {k: v.detach() for k, v in m.named_parameters()}

    def sample_loss(p, x, y):
        return functional_call(m, p, (x[None], y[None]))[1].sum()

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, idx, tgt)
    m.zero_grad()
    m(idx, tgt)[1].sum().backward()  # sum over samples of per-sample grads == batch grad
    for name, prm in m.named_parameters():
        torch.testing.assert_close(per_sample[name].sum(0), prm.grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("to_meta", [False, True])
def test_stack_module_state_vmap_matches_each_model(to_meta: bool):
    models = [make_model(seed=s) for s in (10, 11)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0])
    if to_meta:  # the torch.func ensembling recipe; must not break the tied head
        base = base.to("meta")
    idx, tgt = rand_batch(3, 9, SMALL.vocab_size)

    def run(p, b, x, y):
        return functional_call(base, (p, b), (x, y))

    logits, loss = vmap(run, in_dims=(0, 0, None, None))(params, buffers, idx, tgt)
    assert logits.shape == (2, 3, 9, SMALL.vocab_size) and loss.shape == (2, 3, 9)
    for k, mdl in enumerate(models):
        ref_logits, ref_loss = mdl(idx, tgt)
        torch.testing.assert_close(logits[k], ref_logits, rtol=0, atol=1e-6)
        torch.testing.assert_close(loss[k], ref_loss, rtol=0, atol=1e-6)
    assert not torch.allclose(logits[0], logits[1])


def test_dropout_only_in_train_mode():
    cfg = GPTConfig(vocab_size=40, context_len=16, n_layer=1, n_head=2, d_model=16, dropout=0.5)
    torch.manual_seed(0)
    m = GPT(cfg)
    idx, _ = rand_batch(2, 8, cfg.vocab_size)
    m.train()
    assert not torch.equal(m(idx)[0], m(idx)[0])
    m.eval()
    assert torch.equal(m(idx)[0], m(idx)[0])


def test_default_device_and_threads(monkeypatch):
    assert default_device().type in ("cpu", "cuda")
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("LOSSREDUCE_THREADS", raising=False)
        assert set_torch_threads() == before
        monkeypatch.setenv("LOSSREDUCE_THREADS", "1")
        assert set_torch_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("LOSSREDUCE_THREADS", "two")
        with pytest.raises(ValueError, match="LOSSREDUCE_THREADS"):
            set_torch_threads()
    finally:
        torch.set_num_threads(before)
