"""The NumPy reference: one module per component, each op a ``*_forward`` / ``*_backward`` pair.

Contract: ``out, cache = op_forward(...)`` and ``grads = op_backward(dout, cache)``; float32 and
float64 are preserved (float64 is the verification dtype); bad input raises ValueError/TypeError
naming the argument with the expected and the actual shape or dtype. The cache is a dict whose
``"op"`` entry names the forward that made it (``"rmsnorm_forward"``); a backward handed any other
cache raises TypeError naming both ops before it reads anything else.
"""
