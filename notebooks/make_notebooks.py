"""Writes the notebooks of this folder from the cell sources below (run after editing).

    python notebooks/make_notebooks.py

Every notebook starts with a cell that installs jaxsparse when it is not
importable (Colab), and reads `JAXSPARSE_NOTEBOOK_SMALL=1` to run at tiny
sizes (CI executes them with nbclient: tests/test_notebooks.py).
"""

from __future__ import annotations

import pathlib

import nbformat

HERE = pathlib.Path(__file__).parent

INSTALL = """# Colab or a fresh environment: install jaxsparse and scikit-learn if missing.
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("jaxsparse") is None:
    # Set JAXSPARSE_PIP to a wheel, a git URL or a local checkout to install from elsewhere.
    spec = os.environ.get("JAXSPARSE_PIP", "jaxsparse")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", spec, "scikit-learn"])

SMALL = os.environ.get("JAXSPARSE_NOTEBOOK_SMALL", "0") == "1"  # CI: tiny sizes
print("small sizes" if SMALL else "full sizes")"""

GALLERY = [
    (
        "md",
        """# jaxsparse pattern gallery

Every pattern is one `mask_fn(q_pos, kv_pos, head)`; `patterns.dense_mask`
materialises it and `sparsity.from_pattern` lists the tiles a kernel visits.
Below: the element mask of each pattern, its density (the fraction of query-key
pairs kept), and the fraction of tiles the block-sparse kernels visit.""",
    ),
    ("code", INSTALL),
    (
        "code",
        """import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxsparse as js
from jaxsparse import patterns as P

T = 64 if SMALL else 256          # tokens
BLOCK = 8 if SMALL else 32        # kernel tile
W = T // 8                        # window sizes scale with T""",
    ),
    (
        "code",
        """gallery = {
    "Full": P.Full(),
    "Causal": P.Causal(),
    "SlidingWindow": P.Causal() & P.SlidingWindow(left=W),
    "A-shape (Sink | window)": P.Causal() & (P.Sink(4) | P.SlidingWindow(left=W)),
    "ChunkedCausal": P.ChunkedCausal(2 * W),
    "PrefixLM": P.PrefixLM(T // 4),
    "Dilated": P.Causal() & P.Dilated(left=4 * W, dilation=4),
    "Strided (S2)": P.Causal() & P.Strided(stride=4, block_size=W // 2, local_blocks=1),
    "PowerOfTwo": P.PowerOfTwo(block_size=W // 2, window_blocks=1, sink_blocks=1),
    "PerHead (head 1 of 2)": P.PerHead([P.Causal(), P.Causal() & P.SlidingWindow(left=W)]),
}


def show(ax, mask, title):
    ax.imshow(mask, cmap="Greys", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])


def densities(pattern, t, heads=1, head=0):
    mask = np.asarray(P.dense_mask(pattern, q_len=t, kv_len=t, num_heads=heads))
    sp = js.sparsity.from_pattern(pattern, q_len=t, kv_len=t, block_q=BLOCK, block_kv=BLOCK,
                                  num_heads=heads)
    tiles = np.asarray(sp.to_dense())[0, min(head, sp.num_heads - 1)]
    mask = mask[min(head, mask.shape[0] - 1)]
    return mask, mask.mean(), (tiles != P.EMPTY).mean()


fig, axes = plt.subplots(2, 5, figsize=(16, 7))
rows = []
for ax, (name, pattern) in zip(axes.flat, gallery.items(), strict=False):
    heads, head = (2, 1) if name.startswith("PerHead") else (1, 0)
    mask, density, tiles = densities(pattern, T, heads, head)
    show(ax, mask, f"{name}\\n{density:.0%} of pairs, {tiles:.0%} of tiles")
    rows.append((name, density, tiles))
fig.tight_layout()
plt.show()
for name, density, tiles in rows:
    print(f"{name:28s} pairs {density:6.1%}   tiles visited {tiles:6.1%}")""",
    ),
    (
        "md",
        """## Images and video: neighbourhoods and windows

`Neighborhood` (NATTEN) and `Window` (Swin) live on a token grid. The top row
shows which tokens a corner query and a centre query attend, on the image; the
bottom row is the whole mask in the pattern's tiled token order (the order the
kernels use, where neighbourhoods become bands of whole tiles).""",
    ),
    (
        "code",
        """side = 8 if SMALL else 16
grid_patterns = {
    "Neighborhood 2-D, 3x3": P.Neighborhood((side, side), 3),
    "Neighborhood 2-D, 5x5 dilated 2": P.Neighborhood((side, side), 5 if side > 8 else 3,
                                                      dilation=2),
    "Window 4x4": P.Window((side, side), 4),
    "Window 4x4, shifted": P.Window((side, side), 4, shift=2),
}
n = side * side
fig, axes = plt.subplots(2, 4, figsize=(16, 8))
for col, (name, pattern) in enumerate(grid_patterns.items()):
    tiled = np.asarray(P.dense_mask(pattern, q_len=n, kv_len=n))[0]
    perm = pattern.token_permutation(q_len=n, kv_len=n)  # tiled index i holds token perm[i]
    q_perm, kv_perm = (np.arange(n), np.arange(n)) if perm is None else map(np.asarray, perm)
    natural = np.zeros_like(tiled)
    natural[np.ix_(q_perm, kv_perm)] = tiled
    corner, centre = 0, (side // 2) * side + side // 2
    picture = natural[corner].reshape(side, side) * 1.0 + natural[centre].reshape(side, side) * 2
    axes[0, col].imshow(picture, cmap="Blues", interpolation="nearest")
    axes[0, col].set_title(f"{name}\\ncorner and centre queries", fontsize=9)
    axes[0, col].set_xticks([]), axes[0, col].set_yticks([])
    show(axes[1, col], tiled, f"tiled order, {tiled.mean():.1%} of pairs")
fig.tight_layout()
plt.show()""",
    ),
    (
        "md",
        """## Content-aware patterns: MoBA and vertical-slash

These select keys from q and k on device, so their mask exists only for given
inputs. Here the inputs are random, with a few "heavy" keys that every query
likes, which both methods find.""",
    ),
    (
        "code",
        """from jaxsparse.patterns import dynamic

kq, kk = jax.random.split(jax.random.key(0))
H, D = 1, 16
q = jax.random.normal(kq, (1, T, H, D))
k = jax.random.normal(kk, (1, T, H, D))
heavy = jnp.zeros((T,)).at[jnp.array([3, T // 3, T // 2])].set(4.0)
k = k + heavy[None, :, None, None] * q.mean(axis=1, keepdims=True)  # keys every query likes

moba = P.MoBA(block_size=T // 8, top_k=3)
bits = dynamic.moba_select(q, k, block_size=moba.block_size, top_k=moba.top_k, q_offset=0)
pos = np.arange(T)
moba_mask = np.asarray(bits[0, 0])[:, pos // moba.block_size] & (pos[None, :] <= pos[:, None])

vert, slash = dynamic.vertical_slash_select(q, k, vertical_size=4, slash_size=W // 2,
                                            last_q=16, init_columns=1, local_diagonals=4,
                                            q_offset=0)
vert, slash = np.asarray(vert[0, 0]), np.asarray(slash[0, 0])
offset = pos[:, None] - pos[None, :]
vs_mask = (vert[None, :] | slash[np.clip(offset, 0, T - 1)]) & (offset >= 0)

causal_pairs = T * (T + 1) / 2
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
show(axes[0], moba_mask, f"{moba!r}\\n{moba_mask.sum() / causal_pairs:.0%} of causal pairs")
show(axes[1], vs_mask, f"VerticalSlash (4 columns, {W // 2} diagonals)\\n"
     f"{vs_mask.sum() / causal_pairs:.0%} of causal pairs")
fig.tight_layout()
plt.show()""",
    ),
]

SPEED = [
    (
        "md",
        """# Speed against density

Forward time of `jaxsparse.attention` on this machine's default backend as the
pattern gets sparser. On a CPU this is the blocked XLA path: it visits only the
listed tiles, so time falls roughly in proportion to the tiles kept. Hopper GPU
numbers (Mosaic GPU kernels, against cuDNN, tokamax and FlexAttention) are in
`BENCHMARKS.md`.""",
    ),
    ("code", INSTALL),
    (
        "code",
        """import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxsparse as js
from jaxsparse import patterns as P

T = 256 if SMALL else 2048
H, D = 2, 64
BLOCK = 64 if SMALL else 128
REPEATS = 2 if SMALL else 5
print(jax.devices(), f"T={T} H={H} D={D}")""",
    ),
    (
        "code",
        """keys = jax.random.split(jax.random.key(0), 3)
q, k, v = (jax.random.normal(kx, (1, T, H, D), jnp.float32) for kx in keys)
config = js.Config(block_q=BLOCK, block_kv=BLOCK)


def timed(pattern):
    fn = jax.jit(lambda q, k, v: js.attention(q, k, v, pattern=pattern, config=config))
    fn(q, k, v).block_until_ready()  # compile
    start = time.perf_counter()
    for _ in range(REPEATS):
        fn(q, k, v).block_until_ready()
    return (time.perf_counter() - start) / REPEATS


def tile_density(pattern):
    sp = js.sparsity.from_pattern(pattern, q_len=T, kv_len=T, block_q=BLOCK, block_kv=BLOCK)
    return float((np.asarray(sp.to_dense()) != P.EMPTY).mean())


windows = [T // 16, T // 8, T // 4, T // 2]
candidates = {"Full": P.Full(), "Causal": P.Causal()}
candidates |= {f"window {w}": P.Causal() & P.SlidingWindow(left=w) for w in windows}
candidates |= {f"A-shape {w}": P.Causal() & (P.Sink(BLOCK) | P.SlidingWindow(left=w))
               for w in windows[:2]}
rows = [(name, tile_density(p), timed(p)) for name, p in candidates.items()]
for name, density, seconds in rows:
    print(f"{name:14s} tiles {density:6.1%}   {seconds * 1e3:8.2f} ms")""",
    ),
    (
        "code",
        """full = dict((n, s) for n, _, s in rows)["Full"]
fig, ax = plt.subplots(figsize=(6, 4))
for name, density, seconds in rows:
    ax.scatter(density, seconds * 1e3)
    ax.annotate(name, (density, seconds * 1e3), fontsize=8, xytext=(3, 3),
                textcoords="offset points")
ax.plot([0, 1], [0, full * 1e3], "--", color="gray", label="proportional to tiles")
ax.set(xlabel="fraction of tiles visited", ylabel="forward time (ms)",
       title=f"{jax.default_backend()} / XLA path, T={T}")
ax.legend()
plt.show()""",
    ),
]

TRAIN = [
    (
        "md",
        """# Training a small sparse-attention model against dense attention

`models.training.train` is the library behind `python -m models.train`. Here a
ViT learns scikit-learn's digits with dense, HiLo (LITv2) and BiFormer
attention, and a small LM learns multi-query associative recall (MQAR) with
dense attention and with MoBA (Mixture of Block Attention). Each run writes
metrics (JSON lines), checkpoints and a loss curve to its own directory;
rerunning a cell resumes from the checkpoints.""",
    ),
    ("code", INSTALL),
    (
        "code",
        """import json
import pathlib
import tempfile

import jax
import matplotlib.pyplot as plt

from models.training import TrainConfig, train

ROOT = pathlib.Path(tempfile.mkdtemp(prefix="jaxsparse-nb-"))

# smoke: seconds (CI); cpu: minutes on a CPU; gpu: the full-size runs (minutes on an H100).
PRESET = "smoke" if SMALL else ("gpu" if jax.default_backend() == "gpu" else "cpu")
print("runs in", ROOT, "preset", PRESET)


def run(model, attention, **kw):
    cfg = TrainConfig(model=model, attention=attention, preset=PRESET, progress=False,
                      out=str(ROOT / f"{model}-{attention.replace(',', '_')}"), **kw)
    return train(cfg)


def curves(results, title):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        recs = [json.loads(x) for x in pathlib.Path(r.files["metrics"]).read_text().splitlines()]
        tr = [x for x in recs if x["kind"] == "train"]
        ev = [x for x in recs if x["kind"] == "eval"]
        axes[0].plot([x["step"] for x in tr], [x["loss"] for x in tr], label=name)
        axes[1].plot([x["step"] for x in ev], [x["accuracy"] for x in ev], "o-", label=name)
    axes[0].set(xlabel="step", ylabel="train loss", yscale="log", title=title)
    axes[1].set(xlabel="step", ylabel="eval accuracy", ylim=(0, 1.02))
    axes[0].legend(), axes[1].legend()
    plt.show()""",
    ),
    (
        "code",
        """vit = {name: run("vit", name) for name in ("dense", "hilo", "biformer")}
for name, r in vit.items():
    print(f"ViT {name:9s} eval accuracy {r.eval['accuracy']:.3f}")
curves(vit, "ViT on digits")""",
    ),
    (
        "code",
        """# MoBA in every layer: chunks of 16 (smoke: 64 tokens), 32 (cpu: 128 tokens) or 512
# (gpu: 4096 tokens) keys; each query attends its own chunk and the best earlier one(s).
block, top_k = {"smoke": (16, 2), "cpu": (32, 2), "gpu": (512, 3)}[PRESET]
moba = (("layer_options.moba_block_size", block), ("layer_options.moba_top_k", top_k))
init = None
if PRESET == "gpu":
    # At 4,096 tokens the recall circuit does not form from scratch within minutes: both
    # runs start from a dense run at 512 tokens (a length curriculum; whether that run
    # forms the circuit depends on the seed, see BENCHMARKS.md).
    warm = train(TrainConfig(model="llm", attention="dense", preset="gpu", seq_len=512,
                             steps=6000, seed=1, progress=False, out=str(ROOT / "llm-warmup")))
    print(f"LM warm-up at 512 tokens: MQAR eval accuracy {warm.eval['accuracy']:.3f}")
    init = warm.out
llm = {"dense": run("llm", "dense", init_from=init),
       "moba": run("llm", "moba", overrides=moba, init_from=init)}
for name, r in llm.items():
    print(f"LM {name:12s} MQAR eval accuracy {r.eval['accuracy']:.3f}")
curves(llm, "LM on MQAR")""",
    ),
]


def write(name: str, cells) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["colab"] = {"provenance": []}
    nb.cells = [
        nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
        for kind, src in cells
    ]
    nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    write("01_pattern_gallery.ipynb", GALLERY)
    write("02_speed_vs_density.ipynb", SPEED)
    write("03_train_sparse_vs_dense.ipynb", TRAIN)
