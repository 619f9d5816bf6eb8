"""Named noise schedules -> diffusers DDIMScheduler, chosen at test time.

A schedule is written `NAME[+SPACING][+zero-snr]`:
  NAME     default (the checkpoint's own), linear, scaled_linear, cosine
  SPACING  leading, trailing or linspace (timestep placement; default: the checkpoint's)
  zero-snr rescale the betas to zero terminal SNR (Lin et al. 2024); needs v-prediction
e.g. `cosine`, `cosine+trailing`, `scaled_linear+trailing+zero-snr`.
The prediction type always stays the checkpoint's: the model was trained to predict it.
"""

from __future__ import annotations

from typing import Any

from percept_cli.errors import UsageError

# beta settings of each named schedule (diffusers names; diffusers calls cosine squaredcos_cap_v2)
SCHEDULES: dict[str, dict[str, Any]] = {
    "linear": dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
}
SPACINGS = ("leading", "trailing", "linspace")
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
    """DDIMScheduler from the checkpoint's scheduler config, with a named schedule applied."""
    from diffusers import DDIMScheduler

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
    return DDIMScheduler.from_config(config)


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
