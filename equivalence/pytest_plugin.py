"""The pytest plugin ``crosscheck`` (installed with the package, entry point ``pytest11``).

It gives every test a ``crosscheck`` fixture whose methods are the public API
(``equivalence.api``), failing the test with the report's failure lines (no traceback into
this package) instead of returning a result::

    def test_my_op(crosscheck):
        crosscheck.check(forward, backward, inputs={"x": x}, torch_fn=torch.tanh)
        crosscheck.gradcheck(forward, backward, {"x": x})
        crosscheck.assert_close(got, ref, dtype="float32", baseline=plain)

Each method returns what the API function returns (a Result or a Row) when it passes.
"""
from __future__ import annotations

import pytest


class Crosscheck:
    """The API with pytest failures: ``check``, ``gradcheck``, ``assert_close``."""

    def check(self, forward, backward=None, **kwargs):
        from equivalence import api
        return self._passed(api.check(forward, backward, **kwargs))

    def gradcheck(self, forward, backward, inputs, **kwargs):
        from equivalence import api
        return self._passed(api.gradcheck(forward, backward, inputs, **kwargs))

    def assert_close(self, got, ref, **kwargs):
        from equivalence import api
        try:
            return api.assert_close(got, ref, **kwargs)
        except AssertionError as exc:
            pytest.fail(str(exc), pytrace=False)

    @staticmethod
    def _passed(result):
        try:
            return result.raise_if_failed()
        except AssertionError as exc:
            pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def crosscheck() -> Crosscheck:
    """Check ops against torch and by finite differences; a failure fails the test with the
    report's failure lines (``equivalence.pytest_plugin``)."""
    return Crosscheck()
