"""An independent pure-Python float64 reference for the OPSD objective, and the inputs the tests share.

Used by tests/test_divergence.py (the objective), tests/test_divergence_chunked.py (the memory-efficient
paths) and tests/test_diagnostics.py. `loss_with` and `hidden_loss_with` call the kit's paths with the options
as keywords, so that one test loops over them.
"""

import itertools
import math

import pytest
import torch

from opsd.divergence import DivergenceSpec
from opsd.divergence_chunked import chunked_loss, loss_from_hidden


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second intra-op thread only adds synchronisation on shared cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------------
# Brute-force reference: plain Python floats, one position and one vocabulary entry at a time.
# --------------------------------------------------------------------------------------------------


def ref_summands(zs, zt, beta, temperature, teacher_top_k):
    """Summands l_v of one position, over the teacher's top-k support (or the whole vocabulary)."""
    support = list(range(len(zs)))
    if teacher_top_k is not None:
        support = sorted(support, key=lambda v: zt[v], reverse=True)[:teacher_top_k]

    def softmax(z):
        top = max(z[v] / temperature for v in support)
        weights = {v: math.exp(z[v] / temperature - top) for v in support}
        total = sum(weights.values())
        return {v: w / total for v, w in weights.items()}

    ps, pt = softmax(zs), softmax(zt)
    terms = []
    for v in support:
        if beta == 0:
            terms.append(pt[v] * math.log(pt[v] / ps[v]))
        elif beta == 1:
            terms.append(ps[v] * math.log(ps[v] / pt[v]))
        else:
            m = (1 - beta) * ps[v] + beta * pt[v]
            terms.append(beta * pt[v] * math.log(pt[v] / m) + (1 - beta) * ps[v] * math.log(ps[v] / m))
    return terms


def ref_token(zs, zt, *, beta, temperature, teacher_top_k, clip, clip_mode):
    terms = ref_summands(zs, zt, beta, temperature, teacher_top_k)
    if clip is None:  # no clipping, whatever the mode
        return sum(terms)
    if clip_mode == "pointwise":
        return sum(min(term, clip) for term in terms)
    return min(max(sum(terms), 0.0), clip)


def ref_loss(student, teacher, mask, **options):
    values = [
        ref_token(student[b][n], teacher[b][n], **options)
        for b in range(len(mask))
        for n in range(len(mask[b]))
        if mask[b][n]
    ]
    return sum(values) / len(values) if values else 0.0


CLIPS = [(0.05, "pointwise"), (0.05, "token"), (None, "pointwise")]  # clip None: no clipping
GRID = [
    {"beta": beta, "temperature": tau, "teacher_top_k": k, "clip": clip, "clip_mode": mode}
    for beta, tau, k, (clip, mode) in itertools.product([0.0, 0.5, 1.0], [1.0, 1.1], [None, 3], CLIPS)
]
GRID_IDS = [
    f"b{o['beta']}-t{o['temperature']}-k{o['teacher_top_k']}-{o['clip_mode'] if o['clip'] else 'noclip'}"
    for o in GRID
]

B, T, V = 3, 5, 9
LENGTHS = [5, 2, 0]  # ragged rows, the last one entirely masked out


def ragged_mask(lengths=LENGTHS, width=T):
    return torch.tensor([[n < length for n in range(width)] for length in lengths])


def logits(seed, shape=(B, T, V), dtype=torch.float64, scale=2.0):
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=generator)).to(dtype)


def with_garbage(x, mask):
    """Masked-out positions filled with huge, infinite and NaN values."""
    x = x.clone()
    junk = torch.tensor([1e30, -1e30, float("inf"), float("nan")], dtype=x.dtype)
    x[~mask] = junk.repeat(x.shape[-1])[: x.shape[-1]]
    return x


GRADCHECK_OPTIONS = [
    {"beta": 0.0, "temperature": 1.0, "teacher_top_k": None, "clip": 0.05, "clip_mode": "pointwise"},
    {"beta": 0.0, "temperature": 1.1, "teacher_top_k": 3, "clip": 0.05, "clip_mode": "pointwise"},
    {"beta": 0.5, "temperature": 1.1, "teacher_top_k": None, "clip": 0.05, "clip_mode": "token"},
    {"beta": 1.0, "temperature": 1.0, "teacher_top_k": 3, "clip": None, "clip_mode": "pointwise"},
    {"beta": 0.3, "temperature": 1.1, "teacher_top_k": None, "clip": 0.05, "clip_mode": "pointwise"},
]


def is_smooth(s, t, options, margin=1e-3):
    """True when no clip of the option set sits within `margin` of a kink for these logits."""
    for b, n in itertools.product(range(s.shape[0]), range(s.shape[1])):
        terms = ref_summands(
            s[b, n].tolist(),
            t[b, n].tolist(),
            options["beta"],
            options["temperature"],
            options["teacher_top_k"],
        )
        if options["clip"] is None:
            continue
        if options["clip_mode"] == "pointwise" and any(
            abs(term - options["clip"]) <= margin for term in terms
        ):
            return False
        if options["clip_mode"] == "token" and (
            abs(sum(terms) - options["clip"]) <= margin or abs(sum(terms)) <= margin
        ):
            return False
    return True


def smooth_inputs(options, shape=(2, 3, 7)):
    """Logits away from every clip kink (finite differences need a smooth point)."""
    for seed in range(100):
        s, t = logits(100 + seed, shape, scale=1.5), logits(200 + seed, shape, scale=1.5)
        if is_smooth(s, t, options):
            return s, t
    raise AssertionError("no smooth inputs found")


# --------------------------------------------------------------------------------------------------
# The kit's loss paths with the options as keywords
# --------------------------------------------------------------------------------------------------


def loss_with(student, teacher, mask, *, chunk_size=None, return_per_token=False, **options):
    """`DivergenceSpec(**options).loss` (chunk_size None) or `chunked_loss` chunk_size positions at a time."""
    spec = DivergenceSpec(**options)
    if chunk_size is None:
        return spec.loss(student, teacher, mask, return_per_token=return_per_token)
    return chunked_loss(student, teacher, mask, spec, chunk_size, return_per_token=return_per_token)


def hidden_loss_with(student_hidden, teacher_hidden, weight, mask, *, chunk_size=None, teacher_lm_head_weight=None,
                     return_per_token=False, **options):
    """`loss_from_hidden` with `DivergenceSpec(**options)`."""
    return loss_from_hidden(student_hidden, teacher_hidden, weight, mask, DivergenceSpec(**options),
                            chunk_size=chunk_size, teacher_lm_head_weight=teacher_lm_head_weight,
                            return_per_token=return_per_token)
