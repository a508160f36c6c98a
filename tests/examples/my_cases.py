"""A user's case file: ``crosscheck run --cases tests/examples/my_cases.py`` checks these ops with
the same report, JSON and exit status as the built-in cases."""
import numpy as np
import torch

from equivalence import register


def scaled_tanh(x, a):                 # y = a · tanh(x)
    t = np.tanh(x)
    return a * t, (t, a)


def scaled_tanh_backward(dy, cache):   # dy/dx = a (1 − t²),  dy/da = t
    t, a = cache
    return dy * a * (1 - t * t), dy * t


def softplus(x):                       # y = log(1 + e^x), written to stay finite for large x
    return np.logaddexp(0.0, x), x


def softplus_backward(dy, x):          # dy/dx = sigmoid(x)
    return dy / (1.0 + np.exp(-x))


register("my/scaled_tanh", scaled_tanh, scaled_tanh_backward,
         inputs=lambda rng: {"x": rng.standard_normal((7, 13)), "a": rng.standard_normal((7, 13))},
         torch_fn=lambda x, a: a * torch.tanh(x))
register("my/softplus", softplus, softplus_backward, cache=True,
         inputs=lambda rng: {"x": 4 * rng.standard_normal(97)},
         torch_fn=lambda x: torch.nn.functional.softplus(x))
