"""percept's DDIM twin equals diffusers' DDIMScheduler (timesteps and every step, bit for bit)."""

import itertools

import pytest
import torch
from diffusers.schedulers.scheduling_ddim import DDIMScheduler

from percept_cli.ddim import DDIM
from percept_cli.schedules import SCHEDULES, SD2_SCHEDULER

CASES = [case for case in itertools.product(
    ["default", *SCHEDULES], ["leading", "trailing", "linspace"], ["epsilon", "v_prediction", "sample"], [False, True],
) if case[2] == "v_prediction" or not case[3]]  # zero-snr is offered for v-prediction models only


@pytest.mark.parametrize("name,spacing,prediction,zero_snr", CASES)
def test_same_timesteps_and_steps_as_diffusers(name, spacing, prediction, zero_snr):
    config = dict(SD2_SCHEDULER, **(SCHEDULES.get(name, {})), timestep_spacing=spacing, prediction_type=prediction,
                  rescale_betas_zero_snr=zero_snr)
    ours, ref = DDIM(**config), DDIMScheduler(**config)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, rtol=0, atol=0)
    g = torch.Generator().manual_seed(0)
    for steps in (1, 3, 10, 50):
        ours.set_timesteps(steps)
        ref.set_timesteps(steps)
        assert torch.equal(ours.timesteps, ref.timesteps), steps
        z = torch.randn(2, 4, 5, 5, generator=g)
        zr = z.clone()
        for t in ref.timesteps:
            out = torch.randn(2, 4, 5, 5, generator=g)
            z = ours.step(out, t, z).prev_sample
            zr = ref.step(out, t, zr, eta=0.0).prev_sample
        assert torch.equal(z, zr), (steps, float((z - zr).abs().max()))


def test_clip_sample_and_set_alpha_to_one_follow_diffusers():
    config = dict(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True, clip_sample_range=0.5,
                  set_alpha_to_one=True, steps_offset=0)
    ours, ref = DDIM(**config), DDIMScheduler(**config)
    ours.set_timesteps(4), ref.set_timesteps(4)
    x = torch.randn(1, 3, 4, 4) * 3
    for t in ref.timesteps:
        eps = torch.randn(1, 3, 4, 4)
        a, b = ours.step(eps, t, x), ref.step(eps, t, x)
        assert torch.equal(a.prev_sample, b.prev_sample) and torch.equal(a.pred_original_sample, b.pred_original_sample)
        x = a.prev_sample


def test_refuses_what_it_does_not_do():
    with pytest.raises(ValueError, match="thresholding"):
        DDIM(thresholding=True)
    with pytest.raises(ValueError, match="beta_schedule"):
        DDIM(beta_schedule="nonsense")
    with pytest.raises(ValueError, match="exceed"):
        DDIM().set_timesteps(1001)
    d = DDIM()
    d.set_timesteps(2)
    with pytest.raises(ValueError, match="eta"):
        d.step(torch.zeros(1), d.timesteps[0], torch.zeros(1), eta=0.5)
