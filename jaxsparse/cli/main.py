"""Entry point of the `jaxsparse` command."""

from __future__ import annotations

import argparse
import sys

from jaxsparse.cli import bench, show
from jaxsparse.cli.argtypes import positive_int


def _list_patterns(args: argparse.Namespace) -> int:
    from jaxsparse import patterns as P
    from jaxsparse.cli import presets

    print("Presets (scaled to --seq):")
    for name, p in presets.presets(args.seq).items():
        print(f"  {name:16s} {p!r}")
    print("\nPattern classes (compose with & and |):")
    for name, cls in sorted(P.REGISTRY.items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"  {name:16s} {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxsparse", description="Sparse attention for JAX: benchmark and draw patterns."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    bench.add_parser(sub)
    show.add_parser(sub)
    p = sub.add_parser("patterns", help="list presets and pattern classes")
    p.add_argument("--seq", type=positive_int, default=1024)
    p.set_defaults(run=_list_patterns)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, NotImplementedError) as e:  # NotImplementedError: an
        print(f"jaxsparse: error: {e}", file=sys.stderr)  # --implementation not here
        return 2


if __name__ == "__main__":
    sys.exit(main())
