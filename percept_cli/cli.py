"""The `percept` command line: thin Typer commands over percept_cli.run.

Shared option types are `Annotated` aliases defined once below. `main()` maps every failure to
one line on stderr and an exit code: 0 all done, 1 a user-facing error (PerceptError), 2 a usage
error (ours or Typer's), 130 interrupted. Nothing heavy is imported here: `percept --help` must
not import torch, so each command imports run (and run imports the pipeline) only when called.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from percept_cli import __version__
from percept_cli.errors import PerceptError, UsageError

app = typer.Typer(
    name="percept",
    help="Depth, optical flow and amodal masks with diffusion transformers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# ----------------------------------------------------------------------------------------- shared option types
# Defaults of None mean "the checkpoint's default" (resolved by Predictor.settings after loading).

_MODEL = "Model settings (unset: the checkpoint's defaults)"
_OUT = "Output"
_IN = "Inputs"
_DEPTH = "Depth outputs (docs/outputs.md)"

ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", show_default=False, rich_help_panel=_MODEL,
    help="A name from weights.lock, a local model folder, or hf://REPO@COMMIT/PATH. "
         "[default: $PERCEPT_MODEL, else weights.lock's default]")]
StepsOpt = Annotated[Optional[int], typer.Option(
    "--steps", show_default=False, rich_help_panel=_MODEL, help="DDIM denoising steps.")]
EnsembleOpt = Annotated[Optional[int], typer.Option(
    "--ensemble", show_default=False, rich_help_panel=_MODEL,
    help="Samples from different noise reduced to one prediction; >1 also writes uncertainty maps.")]
ScheduleOpt = Annotated[Optional[str], typer.Option(
    "--schedule", show_default=False, rich_help_panel=_MODEL,
    help="Noise schedule NAME[+leading|+trailing|+linspace][+zero-snr], NAME: default, linear, "
         "scaled_linear, cosine.")]
SeedOpt = Annotated[int, typer.Option("--seed", rich_help_panel=_MODEL, help="Seed of the initial noise.")]
ResolutionOpt = Annotated[Optional[int], typer.Option(
    "--resolution", show_default=False, rich_help_panel=_MODEL, help="Processing resolution in pixels (square).")]
BatchSizeOpt = Annotated[Optional[int], typer.Option(
    "--batch-size", show_default=False, rich_help_panel=_MODEL,
    help="Rows per forward pass (inputs x ensemble members x flow components).")]
ReductionOpt = Annotated[Optional[str], typer.Option(
    "--reduction", show_default=False, rich_help_panel=_MODEL,
    help="Ensemble reducer: mean or median. [default: median for depth, mean for flow]")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", rich_help_panel=_MODEL, help="auto, cpu, cuda, cuda:N or mps (torchrun: cuda:LOCAL_RANK).")]
DtypeOpt = Annotated[str, typer.Option(
    "--dtype", rich_help_panel=_MODEL,
    help="auto, fp32, bf16 or fp16. auto: bf16 on CUDA GPUs with bf16 and CPUs with AVX512_BF16 or AMX, else fp32.")]
FitOpt = Annotated[Optional[str], typer.Option(
    "--fit", show_default=False, rich_help_panel=_MODEL,
    help="How a non-square input meets the square processing grid: stretch (squash it, as the official "
         "script), pad (letterbox with replicated edges, predict, crop back; keeps the aspect ratio) or, for "
         "depth, tile (the whole image for the layout plus overlapping crops at the model's resolution for "
         "detail, aligned and blended; see docs/large-images.md). [default: stretch]")]
TilesOpt = Annotated[Optional[int], typer.Option(
    "--tiles", show_default=False, rich_help_panel=_MODEL,
    help="--fit tile: square crops across the image's short side (more = finer detail, slower). [default: 3]")]
BackwardOpt = Annotated[bool, typer.Option(
    "--backward", rich_help_panel=_OUT,
    help="Also predict B -> A: NAME.flow.backward.flo and NAME.flow.occlusion.png (forward-backward "
         "consistency, 255 = occluded).")]
CompileOpt = Annotated[bool, typer.Option(
    "--compile", rich_help_panel=_MODEL, help="torch.compile the model (GPU speed-up; the first batch compiles).")]
OutputOpt = Annotated[Path, typer.Option(
    "--output", "-o", rich_help_panel=_OUT, help="Output folder; folder inputs mirror their sub-folders in it.")]
FormatOpt = Annotated[Optional[str], typer.Option(
    "--format", show_default=False, rich_help_panel=_OUT,
    help="Comma list of formats to write, or all (depth: npy,png16,color, and ply, exr when named; flow: flo,png,npy; "
         "amodal: png,npy,overlay,rgba). [default: all]")]
OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", rich_help_panel=_OUT,
    help="Predict again and replace existing outputs. Without it, inputs whose outputs all exist are skipped.")]
JsonOpt = Annotated[bool, typer.Option(
    "--json", rich_help_panel=_OUT, help="Print one JSON object per input on stdout.")]
QuietOpt = Annotated[bool, typer.Option(
    "--quiet", "-q", rich_help_panel=_OUT, help="No progress and no notes on stderr (warnings and errors stay).")]
RecursiveOpt = Annotated[bool, typer.Option(
    "--recursive", "-r", rich_help_panel=_IN, help="Search folders (and ** in globs) recursively.")]
EveryOpt = Annotated[int, typer.Option(
    "--every", rich_help_panel=_IN, help="Videos: use every N-th frame.")]
MaxFramesOpt = Annotated[Optional[int], typer.Option(
    "--max-frames", show_default=False, rich_help_panel=_IN, help="Videos: read at most N frames.")]
TemporalOpt = Annotated[bool, typer.Option(
    "--temporal/--no-temporal", rich_help_panel=_IN,
    help="Videos: keep frames consistent (depth aligned in scale and shift to the previous frame; every frame "
         "has the same noise either way). --no-temporal keeps each frame as predicted on its own. The .mp4 uses "
         "one colour range per clip either way.")]
ListOpt = Annotated[Optional[str], typer.Option(
    "--list", show_default=False, rich_help_panel=_IN,
    help="A text file with one pair per line ('-' = stdin); relative paths are relative to the file.")]


def _predict(task: str, inputs: list[str] | None, mask: str | None = None, list_file: str | None = None,
             **options) -> None:
    """The one call behind the three predicting commands."""
    from percept_cli import run

    try:
        run.predict(task, list(inputs or []), run.Options(**options), mask=mask, list_file=list_file)
    except KeyboardInterrupt:  # Typer turns it into exit 130; say what state the outputs are in
        typer.echo("error: interrupted; every output written so far is complete, re-run to resume", err=True)
        raise


# ----------------------------------------------------------------------------------------- predicting commands


@app.command(no_args_is_help=True)
def depth(
    inputs: Annotated[list[str], typer.Argument(
        show_default=False, help="Images, folders, glob patterns, videos, or '-' to read paths from stdin.")],
    model: ModelOpt = None, steps: StepsOpt = None, ensemble: EnsembleOpt = None, schedule: ScheduleOpt = None,
    seed: SeedOpt = 0, resolution: ResolutionOpt = None, batch_size: BatchSizeOpt = None,
    fit: FitOpt = None, tiles: TilesOpt = None,
    device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", reduction: ReductionOpt = None, compile: CompileOpt = False,
    output: OutputOpt = Path("percept-out"), format: FormatOpt = None, overwrite: OverwriteOpt = False,
    json: JsonOpt = False, quiet: QuietOpt = False,
    recursive: RecursiveOpt = False, every: EveryOpt = 1, max_frames: MaxFramesOpt = None,
    temporal: TemporalOpt = True,
    colormap: Annotated[Optional[str], typer.Option(
        "--colormap", show_default=False, rich_help_panel=_DEPTH,
        help="Colours of NAME.depth.color.png and the .mp4: inferno, spectral, turbo or gray (near = bright/warm); default inferno.")] = None,
    fov: Annotated[Optional[float], typer.Option(
        "--fov", show_default=False, rich_help_panel=_DEPTH,
        help="--format ply: horizontal field of view in degrees; default: the image's EXIF focal length, else 60.")]
    = None,
    max_uncertainty: Annotated[Optional[float], typer.Option(
        "--max-uncertainty", show_default=False, rich_help_panel=_DEPTH,
        help="--format ply: drop points whose ensemble uncertainty is above this (needs --ensemble 3 or more).")] = None,
    align: Annotated[Optional[Path], typer.Option(
        "--align", show_default=False, rich_help_panel=_DEPTH,
        help="Known depths, lines 'x y metres' (pixel column, row): fit scale and shift robustly, write "
             "NAME.depth.metric.npy (metres) and make the ply metric. One file for every input, or a folder of "
             "NAME.txt per input.")] = None,
) -> None:
    """Predict depth: NAME.depth.npy (float32, 0 = near), NAME.depth.png (16-bit), NAME.depth.color.png;
    --format ply (point cloud), exr (float); --align for metres. See docs/outputs.md.

    Example: percept depth photos/ -r -o out/ --steps 10 --ensemble 4
    """
    _predict("depth", **locals())


@app.command(no_args_is_help=True)
def flow(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        show_default=False, help="Two frames A B, a video, a folder of frames, or '-' to read paths from stdin.")]
    = None,
    list_file: ListOpt = None,
    model: ModelOpt = None, steps: StepsOpt = None, ensemble: EnsembleOpt = None, schedule: ScheduleOpt = None,
    seed: SeedOpt = 0, resolution: ResolutionOpt = None, batch_size: BatchSizeOpt = None,
    fit: FitOpt = None, backward: BackwardOpt = False,
    device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", reduction: ReductionOpt = None, compile: CompileOpt = False,
    output: OutputOpt = Path("percept-out"), format: FormatOpt = None, overwrite: OverwriteOpt = False,
    json: JsonOpt = False, quiet: QuietOpt = False,
    recursive: RecursiveOpt = False, every: EveryOpt = 1, max_frames: MaxFramesOpt = None,
    temporal: TemporalOpt = True,
) -> None:
    """Predict forward optical flow A -> B: NAME.flow.flo (Middlebury), NAME.flow.png (colour wheel), NAME.flow.npy.

    Frames of a pair must have the same size (a pair that differs is refused). Videos and folders
    give consecutive pairs. Example: percept flow frame1.png frame2.png, or percept flow clip.mp4 --every 2
    """
    _predict("flow", **locals())


@app.command(no_args_is_help=True)
def amodal(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        show_default=False, help="Images (or a video), folders, glob patterns, or '-' for paths on stdin.")] = None,
    mask: Annotated[Optional[str], typer.Option(
        "--mask", show_default=False, rich_help_panel=_IN,
        help="The visible mask of the object (a folder: one mask per image, named like it).")] = None,
    list_file: ListOpt = None,
    model: ModelOpt = None, steps: StepsOpt = None, ensemble: EnsembleOpt = None, schedule: ScheduleOpt = None,
    seed: SeedOpt = 0, resolution: ResolutionOpt = None, batch_size: BatchSizeOpt = None,
    fit: FitOpt = None,
    device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", reduction: ReductionOpt = None, compile: CompileOpt = False,
    output: OutputOpt = Path("percept-out"), format: FormatOpt = None, overwrite: OverwriteOpt = False,
    json: JsonOpt = False, quiet: QuietOpt = False,
    recursive: RecursiveOpt = False, every: EveryOpt = 1, max_frames: MaxFramesOpt = None,
    temporal: TemporalOpt = True,
) -> None:
    """Predict the whole object behind occluders: NAME.amodal.png (0/255), .amodal.npy, .amodal.overlay.png.

    Example: percept amodal scene.jpg --mask visible.png, or percept amodal --list pairs.txt
    """
    _predict("amodal", **locals())


# ----------------------------------------------------------------------------------------- other groups

try:  # torch-free at import, like this module
    from percept_cli import cli_models
except ModuleNotFoundError as e:  # a checkout without it still predicts
    if e.name != "percept_cli.cli_models":
        raise
else:
    app.add_typer(cli_models.app, name="models")

# ----------------------------------------------------------------------------------------- train, upcycle, eval
# Thin commands: each imports its module inside the function so --help stays torch-free.

_TRAIN = "Training (unset: the --config file, else TrainConfig's defaults)"


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML file of TrainConfig fields (see configs/).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", help="Run folder: checkpoints, log.jsonl, cached scenes.")] = None,
    init: Annotated[Optional[str], typer.Option(
        "--init", help="Start from a model: a weights.lock name (generalist), an official-layout folder, our folder, "
                       "a DiT .pt or a diffusers DiT folder (a generative model is widened for the conditioning "
                       "slots first). A model with a VAE trains on its latents.")] = None,
    train_only: Annotated[Optional[str], typer.Option(
        "--train-only", rich_help_panel=_TRAIN,
        help="Train only these parameter groups, freeze the rest (comma-separated): experts, router, mlp, attention, "
             "adaln, final, patch, timestep, labels, motion; embeddings = patch,timestep,labels; blocks.")] = None,
    vae: Annotated[Optional[str], typer.Option(
        "--vae", rich_help_panel=_TRAIN, help="VAE folder (diffusers AutoencoderKL): train in its latent space.")] = None,
    stage: Annotated[Optional[str], typer.Option("--stage", rich_help_panel=_TRAIN, help="perception or generate.")] = None,
    size: Annotated[Optional[str], typer.Option("--size", rich_help_panel=_TRAIN, help="Preset: XXS, XS, S, B, L, XL.")] = None,
    experts: Annotated[Optional[int], typer.Option("--experts", rich_help_panel=_TRAIN, help="MoE experts (0 = dense).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", rich_help_panel=_TRAIN)] = None,
    resolution: Annotated[Optional[int], typer.Option("--resolution", rich_help_panel=_TRAIN)] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", rich_help_panel=_TRAIN)] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", rich_help_panel=_TRAIN)] = None,
    textures: Annotated[Optional[str], typer.Option(
        "--textures", rich_help_panel=_TRAIN, help="Folder of JPEG/PNG photos: train on the photo scene style "
        "(photo textures and backdrops, rooms, cut-outs; scripts/get-photos.sh fetches some).")] = None,
    max_time: Annotated[Optional[float], typer.Option(
        "--max-time", help="Stop (with a checkpoint) after this many seconds; re-run to resume.")] = None,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="Ignore OUT/checkpoint-last and start over.")] = False,
) -> None:
    """Train or fine-tune a model on rendered scenes and dataset folders ([[data]] in --config); resumes
    OUT/checkpoint-last. Works under torchrun (strategy = ddp or fsdp in the config)."""
    from percept_cli.console import Console
    from percept_cli.train import load_config, run as train_run

    if stage is not None and stage not in ("perception", "generate"):
        raise UsageError(f"--stage must be perception or generate, got {stage!r}")
    cfg = load_config(config, out=out, init=init, stage=stage, size=size, num_experts=experts,
                      batch_size=batch_size, resolution=resolution, max_steps=max_steps, lr=lr, textures=textures,
                      train_only=train_only, vae=vae)
    train_run(cfg, resume=not no_resume, max_time=max_time, log=Console().note)


@app.command()
def upcycle(
    source: Annotated[str, typer.Argument(help="Dense model: our folder, a Meta DiT .pt or a diffusers DiT folder.")],
    out: Annotated[Path, typer.Argument(help="New folder for the MoE model (must not exist or be empty).")],
    experts: Annotated[int, typer.Option("--experts", help="Number of experts.")] = 8,
    top_k: Annotated[int, typer.Option("--top-k", help="Experts per token.")] = 2,
    official: Annotated[bool, typer.Option(
        "--official", help="Do not renormalise the top-k weights (the released checkpoint's layout).")] = False,
    router_std: Annotated[float, typer.Option("--router-std", help="Std of the router's initial weights (0 = zeros).")] = 0.0,
) -> None:
    """Dense -> mixture of experts: every expert starts as a copy of the dense MLP."""
    from percept_cli.console import Console
    from percept_cli.models.surgery import load_pretrained_dit, save_surgery, upcycle as do_upcycle

    if experts < 2 or not 1 <= top_k <= experts:
        raise UsageError(f"--experts must be at least 2 and --top-k in 1..experts, got {experts} and {top_k}")
    model = do_upcycle(load_pretrained_dit(source), experts, top_k, norm_topk_prob=not official, router_std=router_std)
    folder = save_surgery(model, out, source=source)
    Console().note(f"wrote {folder} ({experts} experts, top-{top_k}{', not renormalised' if official else ''})")


@app.command()
def export(
    source: Annotated[Path, typer.Argument(help="A model folder in our layout, e.g. RUN/checkpoint-last.")],
    out: Annotated[Path, typer.Argument(help="Destination folder (replaced if it exists).")],
    dtype: Annotated[str, typer.Option("--dtype", help="fp16, bf16 or fp32 weights on disk.")] = "fp16",
) -> None:
    """Copy a trained model without its training state, weights cast (fp16 halves the size)."""
    from percept_cli.checkpoints import export_percept
    from percept_cli.console import Console

    if not (source / "config.json").is_file():
        raise UsageError(f"'{source}' is not a model folder (no config.json); give e.g. RUN/checkpoint-last")
    Console().note(f"wrote {export_percept(source, out, dtype)}")


@app.command(no_args_is_help=True)
def scaling(
    config: Annotated[Path, typer.Argument(help="Study TOML, e.g. configs/scaling-cpu.toml.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option(
        "--out", show_default=False,
        help="Study folder: runs, checkpoints, sweep points. [default: the config's study.out]")] = None,
    docs: Annotated[Optional[Path], typer.Option(
        "--docs", show_default=False,
        help="Folder for results.json, README.md and plots. [default: the config's study.docs]")] = None,
    only: Annotated[Optional[str], typer.Option(
        "--only", show_default=False, help="Run one stage: train, sweep or report. [default: all three]")] = None,
    max_time: Annotated[Optional[float], typer.Option(
        "--max-time", show_default=False, help="Stop training and sweeps after this many seconds; re-run to resume.")] = None,
) -> None:
    """Scaling study: train a DiT family, sweep test-time compute, fit power laws, write the report."""
    from percept_cli import scaling as study
    from percept_cli.console import Console

    readme = study.run_all(config, out_dir=out, docs_dir=docs, stage=only, max_time=max_time, log=Console().note)
    typer.echo(str(readme))


@app.command("eval")
def eval_(
    data: Annotated[Optional[list[Path]], typer.Argument(
        help="Real dataset folders (Hypersim, FlyingChairs, pix2gestalt layouts); none = synthetic scenes.")] = None,
    model: ModelOpt = None,
    task: Annotated[str, typer.Option("--task", help="depth, flow, amodal (any registered task) or all: "
                                                     "every task the model does (synthetic scenes).")] = "all",
    synthetic: Annotated[int, typer.Option("--synthetic", "--count",
                                           help="Held-out rendered scenes per task (--temporal: sequences).")] = 100,
    temporal: Annotated[bool, typer.Option(
        "--temporal", help="Video depth: rendered sequences predicted as a video is, temporal vs --no-temporal; "
                           "per-frame AbsRel / delta1 and flicker (frame-to-frame change against ground truth).")] = False,
    frames: Annotated[int, typer.Option("--frames", help="--temporal: frames per sequence.")] = 10,
    size: Annotated[int, typer.Option("--size", help="Rendered scene size in pixels.")] = 128,
    steps: StepsOpt = None,
    ensemble: EnsembleOpt = None,
    schedule: ScheduleOpt = None,
    seed: SeedOpt = 0,
    resolution: ResolutionOpt = None,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Depth AbsRel/delta1 (scale-and-shift fit), flow EPE and amodal IoU, with baselines beside."""
    import json

    from percept_cli.console import Console, print_eval_table
    from percept_cli.evaluate import evaluate, real_set, synthetic_set
    from percept_cli.hub import resolve_model
    from percept_cli.lock import default_model_name
    from percept_cli.pipeline import Predictor
    from percept_cli.tasks import TASKS

    if task not in (*TASKS, "all"):
        raise UsageError(f"--task must be {', '.join(TASKS)} or all, got {task!r}")
    if synthetic < 1:
        raise UsageError(f"--synthetic must be at least 1, got {synthetic}")
    if temporal and (data or task not in ("depth", "all")):
        raise UsageError("--temporal evaluates depth on rendered sequences; drop the dataset folders and --task")
    if frames < 2:
        raise UsageError(f"--frames must be at least 2 (flicker compares consecutive frames), got {frames}")
    sets = [(str(d), *real_set(d)) for d in data or []]  # read before the model loads: bad folders fail fast
    name = model or default_model_name()
    predictor = Predictor.from_source(resolve_model(name), device=device, dtype=dtype, warn=Console().warn)
    if not data:
        names = [t for t in TASKS if t in predictor.tasks] if task == "all" else [task]
        sets = [(f"synthetic ({synthetic} held-out scenes)", t, synthetic_set(t, synthetic, size)) for t in names]
    settings = dict(steps=steps, ensemble=ensemble, schedule=schedule, seed=seed, resolution=resolution, batch_size=batch_size)
    if temporal:
        from percept_cli.evaluate import evaluate_temporal, sequence_set

        res = evaluate_temporal(predictor, sequence_set(synthetic, frames, size), **settings)
        res.update(model=name, data=f"synthetic sequences ({synthetic} x {frames} frames, {size} px)",
                   scores=res.pop("model"))
        if json_out:
            typer.echo(json.dumps(res))
        else:
            print_eval_table(res)
            c = res["change"]
            typer.echo(f"temporal vs --no-temporal: flicker {c['flicker']:+.1%}, per-frame AbsRel {c['abs_rel']:+.1%}")
        return
    for label, t, samples in sets:
        res = evaluate(predictor, t, samples, **settings)
        res.update(model=name, data=label, scores=res.pop("model"))
        if json_out:
            typer.echo(json.dumps(res))
        else:
            print_eval_table(res)


# ----------------------------------------------------------------------------------------- entry point


def _version(value: bool) -> None:
    if value:
        typer.echo(f"percept {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_version, help="Print the version and exit.")] = False,
) -> None:
    """Depth, optical flow and amodal masks with diffusion transformers."""


def _with_help_hint(message: str, ctx) -> str:
    """Click's message, one line, with where to look: "No such command 'x'; see 'percept --help'"."""
    message = " ".join(message.split())
    if ctx is None:
        return message
    if message.endswith("."):  # Click ends some messages with a full stop: no ".;"
        message = message[:-1]
    return f"{message}{' See' if message.endswith('?') else '; see'} '{ctx.command_path} --help'"


def main(argv: list[str] | None = None) -> None:
    """Run the app and exit: PerceptError -> `error: ...` and its exit code; usage errors -> 2; Ctrl-C -> 130."""
    try:
        code = app(args=argv, prog_name="percept", standalone_mode=False)
    except PerceptError as e:
        typer.echo(f"error: {e}", err=True)
        code = e.exit_code
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    except typer.Exit as e:
        code = e.exit_code
    except typer.TyperException as e:  # Typer's (Click's) own usage errors: one line, exit 2
        ctx, message = getattr(e, "ctx", None), e.format_message().strip()
        if message:  # empty when a bare command printed its help instead
            typer.echo(f"error: {_with_help_hint(message, ctx)}", err=True)
        code = getattr(e, "exit_code", 2)
    sys.exit(code if isinstance(code, int) else 0)
