"""Reference models built only from the public jaxsparse API, with their data and training.

* `models.llm` — decoder-only LM (RoPE, GQA, RMSNorm, SwiGLU) with a per-layer
  attention pattern (`models.llm_attention`) and KV-cache generation.
* `models.dit` — DiT (patchify, adaLN-Zero) for images and short videos with
  dense, window (block-sparse) or neighbourhood attention per layer;
  `models.flow` is its flow-matching objective and sampler.
* `models.vit` — ViT classifier with dense, window, neighborhood, HiLo or BiFormer attention.
* `models.data` — synthetic LM tasks, digits / shapes images, moving-shape videos.
* `python -m models.train` — training CLI (`models.training` holds its parts).
"""
