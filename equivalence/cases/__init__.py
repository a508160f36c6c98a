"""One module per component; each registers its cases with ``equivalence.registry.register``.

Every module in this package is imported by ``equivalence.registry.all_cases``.
"""
