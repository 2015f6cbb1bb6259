import json
import pathlib
import sys

sys.path.insert(0, "bench")
import jax
import jax.numpy as jnp
from profile_train_step import top_ops

from jaxsparse.patterns.dynamic import moba

out = pathlib.Path(sys.argv[1])
q = jax.random.normal(jax.random.key(0), (1, 65536, 16, 128), jnp.bfloat16)
k = jax.random.normal(jax.random.key(1), (1, 65536, 2, 128), jnp.bfloat16)
f = jax.jit(lambda q, k: moba.moba_select(q, k, block_size=512, top_k=3, q_offset=0))
jax.block_until_ready(f(q, k))
with jax.profiler.trace(str(out / "trace"), create_perfetto_trace=True):
    for _ in range(3):
        jax.block_until_ready(f(q, k))
top, totals = top_ops(out / "trace")
print(json.dumps(totals))
for name, ms, calls in top[:20]:
    print(json.dumps({"op": name[:120], "ms_3_calls": round(ms, 3), "calls": calls}))
print(f.lower(q, k).compile().as_text()[:100])
