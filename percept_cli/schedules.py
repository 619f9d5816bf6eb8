"""Named noise schedules -> a DDIM sampler (percept_cli.ddim, equal to diffusers' DDIMScheduler), chosen at test time.

A schedule is written `NAME[+SPACING][+zero-snr]`:
  NAME     default (the checkpoint's own), linear, scaled_linear, cosine
  SPACING  leading, trailing or linspace (timestep placement; default: the checkpoint's)
  zero-snr rescale the betas to zero terminal SNR (Lin et al. 2024); needs v-prediction
e.g. `cosine`, `cosine+trailing`, `scaled_linear+trailing+zero-snr`.
The prediction type always stays the checkpoint's: the model was trained to predict it.
"""

from __future__ import annotations

from typing import Any

from percept_cli.errors import ModelError, PerceptError, UsageError, first_line

# beta settings of each named schedule (diffusers names; diffusers calls cosine squaredcos_cap_v2)
SCHEDULES: dict[str, dict[str, Any]] = {
    "linear": dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
}
SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # what DDIMScheduler.step understands
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")  # what DDIMScheduler builds betas from
MAX_STEPS = 1000

# Stable Diffusion 2's DDIM config: what the official generalist samples with.
SD2_SCHEDULER = dict(
    num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
    prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    timestep_spacing="leading",
)


def parse_schedule(text: str | None) -> tuple[str, str | None, bool]:
    """'cosine+trailing+zero-snr' -> ("cosine", "trailing", True); UsageError on bad parts."""
    parts = [p.strip().lower() for p in (text or "default").split("+") if p.strip()]
    name, spacing, zero_snr = "default", None, False
    for i, part in enumerate(parts):
        if i == 0 and (part in SCHEDULES or part == "default"):
            name = part
        elif part in SPACINGS:
            spacing = part
        elif part in ("zero-snr", "zsnr", "zero_snr"):
            zero_snr = True
        else:
            raise UsageError(
                f"--schedule: unknown part {part!r} in {text!r}; use NAME[+leading|+trailing|+linspace][+zero-snr] "
                f"with NAME one of default, {', '.join(SCHEDULES)}"
            )
    return name, spacing, zero_snr


def make_scheduler(base: dict[str, Any], schedule: str | None = None):
    """DDIM from the checkpoint's scheduler config (DDIMScheduler's keys), with a named schedule applied."""
    from percept_cli.ddim import DDIM  # not diffusers': importing it costs more start-up than torch

    name, spacing, zero_snr = parse_schedule(schedule)
    config = {k: v for k, v in base.items() if not k.startswith("_")}
    config.pop("skip_prk_steps", None)  # PNDM-only key in SD2's 0.8.0-era config
    if name != "default":
        config.pop("trained_betas", None)
        config.pop("beta_start", None), config.pop("beta_end", None)
        config.update(SCHEDULES[name])
    if spacing:
        config["timestep_spacing"] = spacing
    if zero_snr:
        if config.get("prediction_type", "epsilon") != "v_prediction":
            raise UsageError(
                f"--schedule {schedule}: zero-snr needs a v-prediction model (this one predicts "
                f"{config.get('prediction_type', 'epsilon')}); drop +zero-snr"
            )
        config["rescale_betas_zero_snr"] = True
    return DDIM(**config)  # keys DDIM does not read are ignored, as diffusers' from_config does


def check_scheduler_config(config: Any, where: str) -> dict[str, Any]:
    """The checkpoint's scheduler config, or a ModelError naming `where` unless DDIM can sample with it.

    Checked when the model loads, so that a bad file (`beta_schedule = "nonsense"`, a prediction
    type DDIM does not know, timesteps it cannot place) is one line then, not a traceback mid-run.
    """
    fix = "fix the file or re-download the model"
    if not isinstance(config, dict):
        raise ModelError(f"scheduler config '{where}' is not a JSON object of DDIMScheduler settings; {fix}")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ModelError(f"scheduler config '{where}': prediction_type {prediction!r} is not one of "
                         f"{', '.join(PREDICTION_TYPES)}; {fix}")
    betas = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is None and betas not in BETA_SCHEDULES:
        raise ModelError(f"scheduler config '{where}': beta_schedule {betas!r} is not one of "
                         f"{', '.join(BETA_SCHEDULES)}; {fix}")
    try:
        scheduler = make_scheduler(config)
        scheduler.set_timesteps(min(2, int(scheduler.config.num_train_timesteps)))
    except PerceptError:
        raise
    except Exception as exc:  # DDIM on a user's file: anything it raises means the file is bad
        raise ModelError(f"scheduler config '{where}' does not make a DDIM scheduler: {first_line(exc)}; {fix}") from None
    return config


def check_steps(steps: int) -> int:
    """Validate a DDIM step count at the edge."""
    if not 1 <= int(steps) <= MAX_STEPS:
        raise UsageError(f"--steps must be between 1 and {MAX_STEPS}, got {steps}")
    return int(steps)


def schedule_warning(scheduler, steps: int) -> str | None:
    """A note when the first timestep starts far from pure noise (leading spacing, few steps)."""
    scheduler.set_timesteps(steps)
    first, total = int(scheduler.timesteps[0]), scheduler.config.num_train_timesteps
    if first < 0.9 * (total - 1):
        return (
            f"with {steps} step(s) and {scheduler.config.timestep_spacing} spacing, sampling starts at "
            f"t={first} of {total}, far from pure noise; add '+trailing' to --schedule or use more steps"
        )
    return None
