"""Forward time and peak memory of the graph bottleneck: stencil operators versus dense N x N.

    python scripts/benchmark_graph.py --out benchmarks/graph_bottleneck_cpu.md
    python scripts/benchmark_graph.py --sizes 32 64 --repeats 20 --out FILE

The graph part of `difffccf benchmark` (see difffccf_jax/benchmark_cases.py): for each
bottleneck grid (default 32 x 32 and 64 x 64, the paper's 512 channels, 4 heads, FFN 256,
Chebyshev order 3, scaled Laplacian, from configs/paper.py) it times the adjacency and Chebyshev
operators alone and the whole Graformer layer, each as 3 x 3 stencils (graph.py) and as dense
matrices, with compile time apart, XLA's buffer sizes and the peak memory of each case's process.
"""

import argparse
import sys

from difffccf_jax import cli


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeats", type=int, default=5, help="most steady calls per case")
    parser.add_argument("--out", required=True, help="file the report is written to")
    args = parser.parse_args(argv)
    return cli.main(["benchmark", "--cases", "graph", "--graph-sizes",
                     ",".join(str(size) for size in args.sizes),
                     "--max-repeats", str(args.repeats), "--out", args.out])


if __name__ == "__main__":
    sys.exit(main())
