"""Forward time and peak memory of the graph bottleneck: stencil operators versus dense N x N.

    python scripts/benchmark_graph.py --out benchmarks/graph_bottleneck.md
    python scripts/benchmark_graph.py --sizes 32 64 --batch 4 --repeats 20 --out FILE

For each bottleneck grid (default 32 x 32 and 64 x 64, 512 channels; the paper's Graformer layer:
4 heads, FFN 256, Chebyshev order 3) it times two programs, each with the adjacency and
Laplacian applied as 3 x 3 stencils (graph.py) or as dense N x N matrices (precomputed and passed
in, the best case for dense; the published code also rebuilds them on every call):
- 'operators': Â z plus the Chebyshev basis T_0..T_2(L) z, the part that differs;
- 'layer': the whole Graformer layer (its N x N attention logits are common to both).
Compile time is reported apart from the steady-state time (median of --repeats calls after two
warm-up calls). Peak memory is XLA's estimate for the compiled program: arguments + outputs +
temporaries (minus aliased buffers).
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from difffccf_jax import graph


def dense_matrix(operator, height, width):
    """The N x N matrix of a stencil operator, from its action on the N basis images."""
    n = height * width
    basis = jnp.eye(n, dtype=jnp.float32).reshape(n, height, width, 1)
    return operator(basis).reshape(n, n).T


def dense_graph(adjacency, laplacian):
    """A GridGraph whose operators multiply node features [B, H, W, C] by N x N matrices."""
    def multiply(matrix):
        def apply(z):
            b, h, w, c = z.shape
            tokens = z.reshape(b, h * w, c)
            return jnp.einsum("nm,bmc->bnc", matrix.astype(z.dtype), tokens).reshape(z.shape)
        return apply
    return graph.GridGraph(multiply(adjacency), multiply(laplacian))


def programs(args):
    """{(implementation, part): (function(params, z, matrices), needs_matrices)}."""
    def grid_graph(matrices):
        return graph.stencil_graph(args.laplacian) if matrices is None else dense_graph(*matrices)

    def layer(params, z, matrices):
        module = graph.GraformerLayer(args.heads, args.ffn_width, args.cheb_order,
                                      grid_graph(matrices), dtype=jnp.dtype(args.dtype))
        return module.apply({"params": params}, z)

    def operators(params, z, matrices):
        del params
        ops = grid_graph(matrices)
        return ops.adjacency(z), graph.chebyshev_basis(z, ops.laplacian, args.cheb_order)

    return {("stencil", "operators"): (operators, False), ("dense", "operators"): (operators, True),
            ("stencil", "layer"): (layer, False), ("dense", "layer"): (layer, True)}


def measure(function, arguments, repeats):
    """(compile seconds, steady-state median milliseconds, peak MiB) of jit(function)."""
    lowered = jax.jit(function).lower(*arguments)
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    for _ in range(2):
        jax.block_until_ready(compiled(*arguments))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*arguments))
        times.append(time.perf_counter() - start)
    memory = compiled.memory_analysis()
    peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
            + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
    return compile_s, 1e3 * float(np.median(times)), peak / 2**20


def benchmark(args):
    rows = []
    for size in args.sizes:
        z = jax.random.normal(jax.random.key(0), (args.batch, size, size, args.channels),
                              jnp.dtype(args.dtype))
        layer = graph.GraformerLayer(args.heads, args.ffn_width, args.cheb_order,
                                     graph.stencil_graph(args.laplacian))
        params = layer.init(jax.random.key(1), z)["params"]
        matrices = (dense_matrix(graph.normalized_adjacency, size, size),
                    dense_matrix(graph.LAPLACIANS[args.laplacian], size, size))
        for (implementation, part), (function, dense) in programs(args).items():
            result = measure(function, (params, z, matrices if dense else None), args.repeats)
            rows.append((f"{size} x {size} x {args.channels}", implementation, part) + result)
            print(" | ".join(str(cell) for cell in rows[-1]), file=sys.stderr, flush=True)
    return rows


def table(args, rows):
    device = jax.devices()[0]
    lines = [
        f"Graph bottleneck, stencil vs dense: device {device.platform} ({device.device_kind}), "
        f"batch {args.batch}, dtype {args.dtype}, Laplacian {args.laplacian}, "
        f"{args.heads} heads, FFN {args.ffn_width}, order {args.cheb_order}, "
        f"median of {args.repeats} calls.",
        f"Command: python {' '.join(sys.argv)}",
        "",
        "| bottleneck | implementation | part | compile s | steady ms | peak MiB |",
        "|---|---|---|---:|---:|---:|",
    ]
    for grid, implementation, part, compile_s, steady_ms, peak in rows:
        lines.append(f"| {grid} | {implementation} | {part} | {compile_s:.2f} | "
                     f"{steady_ms:.2f} | {peak:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn-width", type=int, default=256)
    parser.add_argument("--cheb-order", type=int, default=3)
    parser.add_argument("--laplacian", choices=sorted(graph.LAPLACIANS), default="scaled")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", required=True, help="file the table is written to")
    args = parser.parse_args(argv)
    text = table(args, benchmark(args))
    print(text, end="")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = f"{args.out}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
