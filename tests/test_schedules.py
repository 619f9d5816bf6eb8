"""schedules.make_scheduler: named schedules, spacing and zero-snr over the checkpoint's DDIM config."""

import math

import pytest
import torch

from percept_cli.ddim import DDIM
from percept_cli.errors import UsageError
from percept_cli.schedules import SD2_SCHEDULER, make_scheduler, parse_schedule


def test_default_keeps_the_checkpoints_betas_and_spacing():
    sd2 = make_scheduler(SD2_SCHEDULER)
    assert isinstance(sd2, DDIM) and sd2.config.beta_schedule == "scaled_linear"
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2  # SD2's scaled_linear
    torch.testing.assert_close(sd2.alphas_cumprod, torch.cumprod(1 - betas, 0))
    sd2.set_timesteps(4)
    assert sd2.timesteps.tolist() == [751, 501, 251, 1]  # leading + steps_offset 1
    trained = [0.1, 0.2, 0.3, 0.4]
    own = make_scheduler({"num_train_timesteps": 4, "trained_betas": trained, "_class_name": "DDIMScheduler",
                          "skip_prk_steps": True})  # private and PNDM-only keys are dropped
    torch.testing.assert_close(own.alphas_cumprod, torch.tensor([0.9, 0.72, 0.504, 0.3024]))


def test_named_schedule_replaces_the_betas_and_keeps_the_prediction_type():
    base = dict(SD2_SCHEDULER, trained_betas=[0.5] * 1000)
    cosine = make_scheduler(base, "cosine")
    assert cosine.config.beta_schedule == "squaredcos_cap_v2" and cosine.config.trained_betas is None
    assert cosine.config.prediction_type == "v_prediction"
    t = 500
    bar = lambda s: math.cos((s / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert float(cosine.alphas_cumprod[t]) == pytest.approx(bar(t + 1) / bar(0), rel=1e-4)
    linear = make_scheduler(SD2_SCHEDULER, "linear")
    assert (linear.config.beta_start, linear.config.beta_end) == (0.0001, 0.02)
    assert base["trained_betas"] == [0.5] * 1000 and "rescale_betas_zero_snr" not in base  # base untouched


@pytest.mark.parametrize("schedule,timesteps", [("default+trailing", [999, 749, 499, 249]),
                                                ("cosine+linspace", [999, 666, 333, 0]),
                                                ("scaled_linear+leading", [751, 501, 251, 1])])
def test_spacing_places_the_timesteps(schedule, timesteps):
    s = make_scheduler(SD2_SCHEDULER, schedule)
    s.set_timesteps(4)
    assert s.timesteps.tolist() == timesteps


def test_zero_snr_needs_v_prediction():
    s = make_scheduler(SD2_SCHEDULER, "scaled_linear+trailing+zero-snr")
    assert s.config.rescale_betas_zero_snr and float(s.alphas_cumprod[-1]) == 0.0  # terminal SNR zero
    assert float(make_scheduler(SD2_SCHEDULER).alphas_cumprod[-1]) > 0
    for prediction in ("epsilon", "sample"):
        with pytest.raises(UsageError, match=f"zero-snr needs a v-prediction model .*predicts {prediction}"):
            make_scheduler(dict(SD2_SCHEDULER, prediction_type=prediction), "cosine+zero-snr")


def test_schedule_text_is_parsed_or_refused():
    assert parse_schedule(None) == ("default", None, False)
    assert parse_schedule(" Cosine + TRAILING + zsnr ") == ("cosine", "trailing", True)
    for bad in ("cosine+sideways", "trailing+cosine"):  # the name comes first
        with pytest.raises(UsageError, match="unknown part"):
            make_scheduler(SD2_SCHEDULER, bad)
