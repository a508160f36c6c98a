"""The harness: case registry, comparison under the tolerance policy, finite-difference gradcheck,
reports and the ``crosscheck`` CLI. ``check_case`` in ``equivalence.harness`` is the one helper the
CLI, the tests and the benchmarks share."""
