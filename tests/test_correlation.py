"""The motion encoder: correlation values, its place in the DiT, the surgery that adds it."""

import pytest
import torch
import torch.nn.functional as F

from percept_cli.errors import ModelError
from percept_cli.models.correlation import MotionEncoder, local_correlation, patch_descriptors
from percept_cli.models.dit import PerceptDiT
from percept_cli.models.surgery import add_motion

from .helpers import tiny_dit


def naive_correlation(a: torch.Tensor, b: torch.Tensor, r: int) -> torch.Tensor:
    h, w = a.shape[-2:]
    bp = F.pad(b, (r,) * 4)
    return torch.stack([(a * bp[..., dy : dy + h, dx : dx + w]).mean(1) for dy in range(2 * r + 1) for dx in range(2 * r + 1)], 1)


def test_local_correlation_equals_per_offset_products_values_and_gradients():
    torch.manual_seed(0)
    a = torch.randn(2, 5, 7, 9, requires_grad=True)
    b = torch.randn(2, 5, 7, 9, requires_grad=True)
    fast, slow = local_correlation(a, b, 2), naive_correlation(a, b, 2)
    assert fast.shape == (2, 25, 7, 9)
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-5)
    g_fast = torch.autograd.grad(fast.square().sum(), (a, b))
    g_slow = torch.autograd.grad(slow.square().sum(), (a, b))
    for x, y in zip(g_fast, g_slow):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_cost_volume_peaks_at_the_true_shift():
    torch.manual_seed(1)
    frame1 = torch.rand(1, 3, 24, 24) * 2 - 1
    frame2 = torch.roll(frame1, shifts=(1, -2), dims=(2, 3))  # content moves down 1, left 2: flow (-2, +1)
    enc = MotionEncoder(out_ch=4, radius=2, levels=1)
    cost = enc.cost_volume(torch.cat([frame1, frame2], 1))[0, :, 4:-4, 4:-4]  # (25, h, w), away from the wrap
    best = cost.argmax(0)  # offset index (dy + r) * 5 + (dx + r)
    assert (best == (1 + 2) * 5 + (-2 + 2)).float().mean() > 0.95
    assert cost.max() <= 1.0 + 1e-5 and cost.min() >= -1.0 - 1e-5  # normalised cross-correlation


def test_patch_descriptors_ignore_brightness_and_contrast():
    torch.manual_seed(2)
    img = torch.rand(1, 1, 10, 10)
    torch.testing.assert_close(patch_descriptors(img), patch_descriptors(img * 0.5 + 0.3), atol=1e-4, rtol=1e-4)


def test_only_flow_labels_see_motion_features():
    model = tiny_dit(motion_channels=4)
    x = torch.randn(4, 9, 32, 32)
    y = torch.tensor([1000, 1001, 1002, 1003])
    feats = model.motion_features(x, y)  # (4, 4, 32, 32)
    assert feats[:2].abs().max() == 0 and feats[2:].abs().amax(dim=(1, 2, 3)).min() > 0
    # changing frame 2 changes flow outputs through the motion features but not depth's prediction
    x2 = x.clone()
    x2[:, 3:6] = torch.roll(x2[:, 3:6], 1, dims=3)
    t = torch.full((4,), 500)
    with torch.no_grad():
        assert torch.allclose(model.motion_features(x2, y)[:2], feats[:2])
        out, out2 = model(x, t, y), model(x2, t, y)
    assert (out2[2:] - out[2:]).abs().max() > 1e-4


def test_add_motion_keeps_outputs_and_round_trips(tmp_path):
    base = tiny_dit()
    model = add_motion(base, channels=4, radius=1, levels=2)
    x = torch.randn(4, 9, 32, 32)
    t = torch.tensor([1, 300, 700, 999])
    y = torch.tensor([1000, 1001, 1002, 1003])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), base(x, t, y), atol=1e-6, rtol=0)  # zero weights on new inputs
    assert model.x_embedder.proj.weight.shape[1] == 9 + 4
    model.save_pretrained(tmp_path)
    again = PerceptDiT.from_pretrained(str(tmp_path))
    assert again.config.motion_channels == 4 and again.config.motion_levels == 2
    with torch.no_grad():
        nudged = x.clone()
        nudged[2:, 3:6] += 0.1
        torch.testing.assert_close(again(nudged, t, y), model(nudged, t, y))
    with pytest.raises(ModelError, match="already has a motion encoder"):
        add_motion(model)
    with pytest.raises(ModelError, match="two condition frames"):
        add_motion(tiny_dit(cond_channels=3))


def test_cost_volume_is_reused_for_the_same_frames_only_outside_autograd():
    torch.manual_seed(0)
    enc = MotionEncoder(4)
    a, b = torch.rand(2, 6, 24, 24), torch.rand(2, 6, 24, 24)
    with torch.no_grad():
        first = enc(a)
        cached = enc.reuse.last[1]
        again = enc(a.clone())  # equal frames in a new tensor, as each denoising step passes them
        assert enc.reuse.last[1] is cached  # reused, not recomputed
        torch.testing.assert_close(again, first, atol=0, rtol=0)
        other = enc(b)  # new frames: recomputed
        torch.testing.assert_close(other, enc.head(enc.cost_volume(b)), atol=0, rtol=0)
        assert enc.reuse.last[1] is not cached
        a_half = a.clone()
        a_half[0, 0, 0, 0] += 1e-3  # one changed pixel is a different pair of frames
        torch.testing.assert_close(enc(a_half), enc.head(enc.cost_volume(a_half)), atol=0, rtol=0)
    out = enc(a)  # training: fresh, differentiable through the head, nothing kept
    assert out.requires_grad and enc.reuse.last is None
