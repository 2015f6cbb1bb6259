"""The reference LM: parameter counts, KV-cache generation = full pass, learning, bad names."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import llm_attention
from models.data import batch_rng, lm_tasks
from models.layers import count_params
from models.llm import LLM, LLMConfig, generate, token_loss
from tests.models_util import fit

# Small enough that every sparse kind is really sparse at 24-64 tokens.
OPTIONS = llm_attention.LayerOptions(
    window=8,
    sink=2,
    moba_block_size=8,
    moba_top_k=2,
    vertical_size=64,
    slash_size=64,
    last_q=8,
    init_columns=1,
    local_diagonals=4,
)


def _config(**kw) -> LLMConfig:
    base = dict(
        vocab_size=48, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, layer_options=OPTIONS
    )
    return LLMConfig(**{**base, **kw})


@pytest.mark.parametrize("attention", ["dense", "hybrid_moba", "sliding_window,streaming"])
@pytest.mark.parametrize("tie", [False, True])
def test_param_count_matches_formula(attention, tie):
    cfg = _config(attention=attention, num_layers=4, tie_embeddings=tie, mlp_hidden=40)
    assert count_params(LLM(cfg, rngs=nnx.Rngs(0))) == cfg.num_params()


def test_param_formula_by_hand():
    cfg = LLMConfig(vocab_size=10, dim=8, num_layers=1, num_heads=2, num_kv_heads=1, mlp_hidden=16)
    # embed + q,o (8x8 each) + k,v (8x4 each) + swiglu 3*8*16 + 2 norms + final norm + head
    assert cfg.num_params() == 80 + 128 + 64 + 384 + 16 + 8 + 80


def test_layer_kinds_cycle_and_mixes():
    assert llm_attention.layer_kinds("hybrid_moba", 8) == ("moba",) * 3 + ("dense",) + (
        "moba",
    ) * 3 + ("dense",)
    assert llm_attention.layer_kinds("moba,dense", 3) == ("moba", "dense", "moba")


def test_generation_with_cache_equals_full_pass():
    """Every decodable kind in one model: prefill + one token at a time = the full pass.

    MoBA is sparse here (24 tokens, 3 chunks of 8, top 2) and decodes with its
    own gate; vertical-slash budgets cover the sequence, so its full pass is
    dense causal, which is how it decodes.
    """
    cfg = _config(attention="dense,sliding_window,moba,streaming,vertical_slash", num_layers=5)
    model = LLM(cfg, rngs=nnx.Rngs(0))
    prompt = jax.random.randint(jax.random.key(1), (2, 10), 0, cfg.vocab_size, jnp.int32)
    new, logits = generate(model, prompt, 14, return_logits=True)
    assert new.shape == (2, 14)
    sequence = jnp.concatenate([prompt, new], axis=1)
    full = nnx.jit(lambda m, x: m(x))(model, sequence)[:, :-1]
    np.testing.assert_allclose(logits, full, atol=2e-5, rtol=2e-5)
    np.testing.assert_array_equal(new, jnp.argmax(full[:, 9:], axis=-1))


@pytest.mark.parametrize("attention", ["dense", "hybrid_moba"])
def test_few_steps_reduce_the_loss(attention):
    cfg = _config(attention=attention, num_layers=4)
    task = lm_tasks.LMTask(name="mqar", seq_len=64, vocab_size=cfg.vocab_size, num_pairs=6)
    batch = {k: jnp.asarray(v) for k, v in task.batch(batch_rng(0, "train", 0), 4).items()}

    def loss_fn(model):
        return token_loss(model(batch["inputs"]), batch["targets"], batch["weights"])[0]

    losses = fit(LLM(cfg, rngs=nnx.Rngs(0)), loss_fn)
    assert losses[-1] < losses[0] - 0.1, losses


def test_bad_attention_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid attentions: dense, sliding_window.*hybrid_moba"):
        _config(attention="mobaa")
    with pytest.raises(ValueError, match="unknown attention 'nope'"):
        _config(attention="moba,nope")
    with pytest.raises(ValueError, match="num_heads=4 must be a multiple of num_kv_heads=3"):
        _config(num_kv_heads=3)
    with pytest.raises(ValueError, match="moba_top_k=0"):
        dataclasses.replace(OPTIONS, moba_top_k=0)


@pytest.mark.skipif(not llm_attention.nsa_available(), reason="no NativeSparseAttention")
def test_nsa_layers_learn_and_generate():
    """NSA (sparse at 48 tokens: 6 blocks of 8, top 3, window 8) learns; generation uncached."""
    opts = dataclasses.replace(
        OPTIONS, nsa_kernel_size=8, nsa_stride=4, nsa_block_size=8, nsa_top_n=3, nsa_window=8
    )
    cfg = _config(attention="nsa,dense", layer_options=opts)
    task = lm_tasks.LMTask(name="mqar", seq_len=48, vocab_size=cfg.vocab_size, num_pairs=4)
    batch = {k: jnp.asarray(v) for k, v in task.batch(batch_rng(0, "train", 0), 4).items()}

    def loss_fn(model):
        return token_loss(model(batch["inputs"]), batch["targets"], batch["weights"])[0]

    model = LLM(cfg, rngs=nnx.Rngs(0))
    assert not model.can_decode
    losses = fit(model, loss_fn)
    assert losses[-1] < losses[0] - 0.1, losses
    new, logits = generate(model, batch["inputs"][:, :40], 8, return_logits=True)
    full = nnx.jit(lambda m, x: m(x))(model, jnp.concatenate([batch["inputs"][:, :40], new], 1))
    np.testing.assert_allclose(logits, full[:, :-1], atol=1e-5)


def test_decode_without_cache_is_an_error():
    model = LLM(_config(attention="moba", num_layers=1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="init_cache"):
        model(jnp.zeros((1, 1), jnp.int32), decode=True)


def test_one_hot_embedding_equals_the_gather_with_gradients():
    from models.llm import embed_tokens

    tokens = jnp.array([[0, 5, 5, 2], [7, 1, 0, 3]])
    for dtype in (jnp.float32, jnp.bfloat16):
        embed = nnx.Embed(8, 6, dtype=dtype, rngs=nnx.Rngs(0))
        np.testing.assert_array_equal(embed_tokens(embed, tokens), embed(tokens))

        def loss(fn, embed=embed):
            return nnx.grad(lambda e: (fn(e).astype(jnp.float32) ** 2).sum())(embed)

        got = loss(lambda e: embed_tokens(e, tokens)).embedding[...]
        want = loss(lambda e: e(tokens)).embedding[...]
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_decode_checks_the_cache_size():
    """MoBA decodes through `llm_decode.cached_attention`; past the cache is an error."""
    model = LLM(_config(attention="moba", num_layers=1), rngs=nnx.Rngs(0))
    model.init_cache(1, 4)
    token = jnp.zeros((1, 1), jnp.int32)
    for _ in range(4):
        model(token, decode=True)
    with pytest.raises(ValueError, match="at cache index 4 needs max_length >= 5, but the cache"):
        model(token, decode=True)
    model.init_cache(1, 4)
    with pytest.raises(ValueError, match=r"shape \(2, 1, 32\) does not fit the cache \[B=1"):
        model(jnp.zeros((2, 1), jnp.int32), decode=True)


def test_bad_tokens_and_prompts_are_errors():
    cfg = _config(attention="moba", num_layers=1, vocab_size=32)
    model = LLM(cfg, rngs=nnx.Rngs(0))
    for bad in (40, -1):
        with pytest.raises(ValueError, match=rf"tokens must be ids in \[0, 32\).*got {bad}\."):
            model(jnp.array([[bad, 0]]))
    with pytest.raises(TypeError, match="tokens must be an integer array, got dtype float32"):
        model(jnp.array([[1.5, 0.0]]))
    with pytest.raises(ValueError, match=r"got shape \(4,\); add a batch axis \(prompt\[None\]\)"):
        generate(model, jnp.arange(4), 2)
    with pytest.raises(ValueError, match="prompt must be ids in"):
        generate(model, jnp.array([[3, 32]]), 2)
    with pytest.raises(ValueError, match="max_new_tokens=0 must be >= 1"):
        generate(model, jnp.arange(4)[None], 0)


def test_bad_targets_are_errors():
    logits, weights = jnp.zeros((1, 10, 32)), jnp.ones((1, 10))
    with pytest.raises(ValueError, match=r"targets must be ids in \[0, 32\).*got 40\."):
        token_loss(logits, jnp.full((1, 10), 40), weights)
    with pytest.raises(TypeError, match="targets must be an integer array"):
        token_loss(logits, jnp.ones((1, 10)), weights)
    with pytest.raises(ValueError, match=r"targets must have the logits' shape.*got \(1, 9\)"):
        token_loss(logits, jnp.ones((1, 9), jnp.int32), weights)


@pytest.mark.parametrize("field", ["head_dim", "mlp_hidden"])
@pytest.mark.parametrize("value", [0, -5])
def test_optional_widths_are_none_or_positive(field, value):
    with pytest.raises(ValueError, match=f"{field}={value} must be >= 1. Use None"):
        _config(**{field: value})


def test_smoke_preset_moba_is_sparse():
    """The smoke preset's MoBA chunks are shorter than its sequence, so MoBA is not dense."""
    from models.training.config import TrainConfig
    from models.training.experiments import LLMExperiment

    train = TrainConfig(model="llm", attention="hybrid_moba", preset="smoke").resolve()
    cfg = LLMExperiment(train).model_config
    assert cfg.layer_options.moba_block_size * cfg.layer_options.moba_top_k < train.seq_len
    tokens = jax.random.randint(jax.random.key(0), (1, train.seq_len), 0, cfg.vocab_size)
    moba = LLM(cfg, rngs=nnx.Rngs(0))(tokens)
    dense = LLM(dataclasses.replace(cfg, attention="dense"), rngs=nnx.Rngs(0))(tokens)
    assert not np.allclose(moba, dense, atol=1e-3)
