"""The harness: case registry, comparison under the tolerance policy, finite-difference gradcheck,
reports, benchmarks and the ``crosscheck`` CLI. ``check_case`` in ``equivalence.harness`` is the
one helper the CLI, the tests and the benchmarks share.

The public API checks your own code through that same helper (``equivalence.api``)::

    from equivalence import check, gradcheck, assert_close, assert_equivalent, register
"""
from equivalence.api import Result, assert_close, assert_equivalent, check, gradcheck, register

__all__ = ["check", "gradcheck", "assert_close", "assert_equivalent", "register", "Result"]
