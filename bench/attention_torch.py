"""The attention bench's `torch` mode: PyTorch FlexAttention on the same masks
(`python bench/attention_gpu.py torch OUT_DIR`, its own process).
"""

from __future__ import annotations

import datetime
import sys

from attention_common import (
    BLOCK,
    SEQS,
    WINDOW,
    B,
    D,
    H,
    emit,
    flops,
    random_block_mask,
)


def torch_bench():
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    from triton.testing import do_bench

    emit(
        mode="torch",
        torch=torch.__version__,
        device=torch.cuda.get_device_name(),
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        argv=" ".join(sys.argv),
    )
    # Every (mask, length) is a new compiled kernel; the default recompile limit
    # (8) would silently fall back to eager (unfused, O(S^2) memory).
    torch._dynamo.config.cache_size_limit = 128
    torch._dynamo.config.accumulated_cache_size_limit = 1024
    flex = torch.compile(flex_attention, dynamic=False)

    def bench(fn):
        return do_bench(fn, warmup=100, rep=500, return_mode="median") / 1e3

    for S in SEQS:
        q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        nb = S // BLOCK
        bm_np = random_block_mask(nb)
        bm = torch.from_numpy(bm_np).cuda()
        mods = {
            "full": None,
            "causal": lambda b, h, qi, ki: qi >= ki,
            "window": lambda b, h, qi, ki: (qi >= ki) & (qi - ki < WINDOW),
            "blocksparse": lambda b, h, qi, ki, bm=bm: bm[qi // BLOCK, ki // BLOCK],
        }
        dens = {
            "full": 1.0,
            "causal": 0.5,
            "window": min(S, WINDOW) / S,
            "blocksparse": float(bm_np.mean()),
        }
        for kind, mm in mods.items():
            try:
                blk = (
                    None
                    if mm is None
                    else create_block_mask(mm, None, None, S, S, device="cuda", BLOCK_SIZE=BLOCK)
                )
                t = bench(lambda q=q, k=k, v=v, blk=blk: flex(q, k, v, block_mask=blk))
                emit(
                    impl="flex",
                    S=S,
                    kind=kind,
                    ms=round(t * 1e3, 4),
                    tflops=round(flops(S, kind, dens[kind]) / t / 1e12, 1),
                    density=round(dens[kind], 4),
                )
            except Exception as e:
                emit(impl="flex", S=S, kind=kind, error=repr(e)[:300])
        try:
            qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
            blk = create_block_mask(
                mods["causal"], None, None, S, S, device="cuda", BLOCK_SIZE=BLOCK
            )

            def fb(qg=qg, kg=kg, vg=vg, blk=blk):
                flex(qg, kg, vg, block_mask=blk).sum().backward()

            t = bench(fb)
            emit(
                impl="flex",
                S=S,
                kind="causal_fwd_bwd",
                ms=round(t * 1e3, 4),
                tflops=round(flops(S, "causal_fwd_bwd") / t / 1e12, 1),
                density=0.5,
            )
        except Exception as e:
            emit(impl="flex", S=S, kind="causal_fwd_bwd", error=repr(e)[:300])
        torch.cuda.empty_cache()
