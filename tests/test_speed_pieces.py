"""Speed pieces, for correctness only (no timings): the prefetcher, the compile flag."""

import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from percept_cli.autoencoder import PixelSpace
from percept_cli.pipeline import Predictor, TaskInput, cast_matmul_weights, maybe_compile
from percept_cli.prefetch import prefetch
from percept_cli.schedules import SD2_SCHEDULER
from tests.helpers import tiny_dit


def job(value, delay=0.0, log=None):
    def run():
        if log is not None:
            log.append(("start", value))
        time.sleep(delay)
        return value
    return run


@pytest.mark.parametrize("workers,depth", [(1, 1), (2, 4), (4, 2)])
def test_prefetch_keeps_input_order(workers, depth):
    delays = [0.03, 0.0, 0.02, 0.0, 0.01, 0.0, 0.0]  # later jobs finish first
    assert list(prefetch((job(i, d) for i, d in enumerate(delays)), workers=workers, depth=depth)) == list(range(7))


def test_prefetch_bounds_jobs_in_flight():
    lock, state = threading.Lock(), {"now": 0, "most": 0}

    def tracked(i):
        def run():
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
            time.sleep(0.005)
            with lock:
                state["now"] -= 1
            return i
        return run

    started = []
    def jobs():
        for i in range(20):
            started.append(i)
            yield tracked(i)

    it = prefetch(jobs(), workers=4, depth=3)
    assert next(it) == 0
    assert len(started) <= 4  # the window (3) plus the one topped up after the first result
    assert list(it) == list(range(1, 20))
    assert state["most"] <= 3


def test_prefetch_raises_at_the_failing_item():
    def boom():
        raise ValueError("cannot decode b.png")

    it = prefetch([job(0), boom, job(2)], workers=2, depth=3)
    assert next(it) == 0
    with pytest.raises(ValueError, match="b.png"):
        next(it)


def test_prefetch_close_early_stops_taking_jobs():
    log = []
    it = prefetch((job(i, 0.001, log) for i in range(100)), workers=2, depth=2)
    assert next(it) == 0
    it.close()
    assert len([e for e in log if e[0] == "start"]) <= 3


@pytest.mark.parametrize("kw,match", [(dict(workers=0), "workers"), (dict(depth=0), "depth")])
def test_prefetch_rejects_bad_sizes(kw, match):
    with pytest.raises(ValueError, match=match):
        list(prefetch([job(1)], **kw))


def test_prefetch_pin_is_a_no_op_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("pins for real on a CUDA machine")
    t = torch.ones(3)
    (got,) = prefetch([lambda: (t, {"x": t})], pin=True)
    assert got[0] is t and got[1]["x"] is t


def test_compiled_model_matches_eager_with_the_cpu_fast_paths():
    """torch.compile traces the plain ops (fastpath steps aside while compiling) and agrees with eager."""
    model = tiny_dit(num_experts=2).requires_grad_(False)
    assert Predictor(tiny_dit(), PixelSpace(), SD2_SCHEDULER, dict(resolution=32), device="cpu").compiled is False  # off by default
    compiled = maybe_compile(model, True)
    assert compiled is not model and compiled._orig_mod is model
    x, t, y = torch.randn(2, 9, 32, 32), torch.tensor([5, 9]), torch.tensor([1000, 1001])
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, y), model(x, t, y), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("experts,motion", [(0, 4), (4, 0)])
def test_bf16_weights_stored_once_give_bitwise_the_autocast_result(experts, motion):
    """The Predictor stores matmul weights in bf16; autocast would cast them per call to the same values."""
    plain = tiny_dit(num_experts=experts, motion_channels=motion)
    cast = cast_matmul_weights(tiny_dit(num_experts=experts, motion_channels=motion), torch.bfloat16)
    assert cast.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert cast.t_embedder.mlp[0].weight.dtype == torch.bfloat16 and cast.pos_embed.dtype == torch.float32
    x = torch.randn(4, 9, 32, 32)
    t, y = torch.tensor([999, 700, 300, 1]), torch.tensor([1000, 1001, 1002, 1003])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(plain.requires_grad_(False)(x, t, y), cast.requires_grad_(False)(x, t, y))
    pred = Predictor(tiny_dit(num_experts=experts), PixelSpace(), SD2_SCHEDULER, dict(resolution=32), device="cpu",
                     dtype="bf16")
    assert pred.model.final_layer.linear.weight.dtype == torch.bfloat16
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ref = Predictor(tiny_dit(num_experts=experts), PixelSpace(), SD2_SCHEDULER, dict(resolution=32), device="cpu",
                    dtype="bf16")
    ref.model.float()  # back to fp32 weights: plain autocast, as before the cast
    out, want = (p.predict("depth", [TaskInput(img)], p.settings("depth", steps=2, ensemble=2, seed=0))[0].depth
                 for p in (pred, ref))
    assert out.shape == (32, 32) and np.array_equal(out, want)


def test_fp32_onednn_route_is_plain_pytorch_within_float_rounding():
    """fastpath.Linear / linear_gelu (oneDNN, fused tanh GELU) against plain PyTorch (MKL, ATen GELU) in fp32."""
    from percept_cli.models import fastpath

    if fastpath.ONEDNN_LINEAR is None:
        pytest.skip("no oneDNN in this torch build (or PERCEPT_ONEDNN=0): the plain route is the only one")
    torch.manual_seed(0)
    model = tiny_dit(num_experts=4, motion_channels=4)
    x = torch.randn(4, 9, 32, 32)
    t, y = torch.tensor([999, 700, 300, 1]), torch.tensor([1000, 1001, 1002, 1003])
    with torch.no_grad():
        fast = model(x, t, y)
        with fastpath.plain():
            plain = model(x, t, y)
    assert not torch.equal(fast, plain)  # the route was taken
    assert (fast - plain).abs().max() <= 1e-5 * plain.abs().max()
    mlp = model.blocks[0].moe.experts[0]
    h = torch.randn(300, 128)
    with torch.no_grad():
        want = F.gelu(F.linear(h, mlp.fc1.weight, mlp.fc1.bias), approximate="tanh")
        torch.testing.assert_close(fastpath.linear_gelu(mlp.fc1, h), want, atol=1e-5, rtol=1e-5)
    # training (autograd on) and autocast take the plain route: bitwise PyTorch
    out = model(x, t, y)
    assert out.requires_grad and torch.equal(out.detach(), plain)
