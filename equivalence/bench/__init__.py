"""Benchmarks: one module per ``crosscheck bench NAME``, on one shared layer (``common``).

Each module has ``add_arguments(parser)`` and ``run(args) -> {table name: rows}``; the CLI
prints every table and ``--json PATH`` writes them. ``common`` times every side of a comparison
in a fresh interpreter with the same thread settings, and holds the statistics, ratio rows,
plots and JSON output that every bench shares.
"""
BENCHES = {  # name -> module
    "attention": "equivalence.bench.attention",
    "flash": "equivalence.bench.flash",
    "optim": "equivalence.bench.optim",
    "tokenizer": "equivalence.bench.tokenizer",
    "moe": "equivalence.bench.moe",
    "allreduce": "equivalence.bench.allreduce",
    "paged": "equivalence.bench.paged",
    "flash-accuracy": "equivalence.bench.flash_accuracy",
    "kernels": "equivalence.bench.kernels",
    "train": "equivalence.bench.train",
}
# ``crosscheck bench flash --backend opencl|cupy`` times the kernels instead
KERNEL_BENCHES = {"flash": "equivalence.bench.flash_kernels"}
