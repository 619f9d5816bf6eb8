"""The one implementation behind the predicting commands (`percept depth`, `flow`, `amodal`): any
registered task (tasks/), which says how its inputs are collected and decoded, how a video's
frames become jobs, which files it writes and what a video frame shows. _Run.run in three parts:

plan (_Run.plan)
  1. validate option values at the edge: before any file is decoded or any model is loaded
  2. expand the inputs into sources (Task.sources), check the output folder; under torchrun
     take this rank's shard. An input that cannot be used (missing, not an image, no mask) fails
     alone: it is reported and the rest go on
  3. drop sources whose outputs all exist (unless --overwrite; uncertainty maps count when the
     ensemble actually used, flag or checkpoint default, has more than one member); nothing left
     -> no model load
stream (_Run.stream)
  4. resolve and load the model once, when the first input has decoded; settings = flag >
     checkpoint default > built-in default
  5. stream jobs (one per image, pair or video frame) in chunks through Predictor.predict_iter;
     a bad input fails alone, every file is written atomically (Task.write); one JSON record
     per input (--json) as soon as its files are written, in input order; .mp4 writers are
     held on an ExitStack, so any exception (Ctrl-C too) leaves no half-made video
report (_Run.report)
  6. a summary line; BatchFailed (exit 1) if anything failed, a truncated video included (its
     decoded frames are written, the shortfall is a warning and counts as a failure)

torch is imported only in step 4, so planning and `--help` stay light.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import time
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any, Iterable, Iterator, TextIO

import numpy as np

from percept_cli import media, writers
from percept_cli.console import Console
from percept_cli.dtypes import check_dtype  # no torch at planning time
from percept_cli.errors import InputError, OutputError, UsageError
from percept_cli.tasks import Source, get_task  # numpy only: no torch at planning time

REDUCTIONS = ("mean", "median")
DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
CHUNK = 32  # inputs decoded and predicted together: bounded memory, full batches
HELD = 8  # chunks' worth of entries a group holds at most (skipped video frames keep their .mp4 frame)
VIDEO_FPS = 10.0  # for the .mp4 when the container does not say
MAX_RESOLUTION_ENV = "PERCEPT_MAX_RESOLUTION"
MAX_RESOLUTION = 4096  # px per side of the processing grid; 100000 would ask for 120 GB


class BatchFailed(InputError):
    """Some inputs of a batch failed (each already reported); the rest were written."""


@dataclass
class Options:
    """Every predicting option; None means 'the checkpoint's default' (Predictor.settings)."""

    model: str | None = None  # None: lock.default_model_name() ($PERCEPT_MODEL, then weights.lock)
    steps: int | None = None
    ensemble: int | None = None
    schedule: str | None = None
    seed: int = 0
    resolution: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    dtype: str = "auto"  # bf16 where the device runs it fast, else fp32 (dtypes.resolve_dtype)
    reduction: str | None = None
    fit: str | None = None  # stretch | pad | tile (pipeline.FITS; tile: tasks with a blend rule, depth)
    tiles: int | None = None  # fit=tile: crops across the short side (None: the checkpoint's, else 3)
    backward: bool = False  # flow: also B -> A, NAME.flow.backward.flo and NAME.flow.occlusion.png
    compile: bool = False  # torch.compile the denoiser (GPUs)
    output: Path = Path("percept-out")
    format: str | None = None  # comma list; None = every format of the task
    overwrite: bool = False
    json: bool = False
    quiet: bool = False
    recursive: bool = False
    every: int = 1
    max_frames: int | None = None
    temporal: bool = True  # videos: the task's per-video state links frames (depth aligned); False = independent
    colormap: str | None = None  # depth: colour map of NAME.depth.color.png and the .mp4 (writers.DEPTH_COLORMAPS)
    fov: float | None = None  # depth ply: horizontal field of view in degrees (None: EXIF, else 60)
    max_uncertainty: float | None = None  # depth ply: drop points whose uncertainty is above it
    align: Path | None = None  # depth: 'x y depth' file (or folder of NAME.txt) -> NAME.depth.metric.npy


@dataclass
class Job:
    """One prediction: an image, a pair, an image with its mask, or one frame (pair) of a video."""

    source: Source
    rel: Path
    frame: int | None = None
    item: Any = None  # pipeline.TaskInput once decoded; dropped after writing
    status: str = "pending"  # pending | ok | skipped | failed
    error: str | None = None
    outputs: list[Path] = field(default_factory=list)
    viz: np.ndarray | None = None  # this frame of the video's .mp4
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # the task's --json fields (Task.record)


@dataclass
class VideoEnd:
    """Marks the end of a video's frames in the job stream; its .mp4 is finished (or discarded) here."""

    source: Source
    error: str | None = None
    short: str | None = None  # fewer frames decoded than declared: the .mp4 is kept, the video counts as failed


@dataclass
class Plan:
    """What a run will do: this rank's sources, each with what `done` says, and the inputs that failed."""

    todo: list[tuple[Source, bool | str]]  # True: outputs exist; False: work; str: why it cannot be written
    problems: list[media.Problem]

    @property
    def pending(self) -> list[Source]:
        return [src for src, done in self.todo if done is not True]


def _waiting(entry: Job | VideoEnd) -> bool:
    """Whether an entry is a job still to predict."""
    return isinstance(entry, Job) and entry.status == "pending"


# ------------------------------------------------------------------------------------------------ 1. edge checks


def check_options(task: str, opts: Options) -> tuple[str, ...]:
    """Validate values that need no model; returns the parsed formats. UsageError names the option and fix."""
    from percept_cli.schedules import parse_schedule

    spec = get_task(task)
    for name, value in (("--steps", opts.steps), ("--ensemble", opts.ensemble), ("--batch-size", opts.batch_size),
                        ("--resolution", opts.resolution), ("--every", opts.every), ("--max-frames", opts.max_frames)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    if opts.resolution is not None and opts.resolution > (limit := max_resolution()):
        raise UsageError(f"--resolution {opts.resolution} is above the limit of {limit} px; lower --resolution, "
                         f"or raise the limit with {MAX_RESOLUTION_ENV}={opts.resolution} if the memory is there")
    media.max_pixels()  # a bad $PERCEPT_MAX_PIXELS is a usage error now, not at the first image
    if opts.seed < 0:
        raise UsageError(f"--seed must be zero or positive, got {opts.seed}")
    if not DEVICE_RE.fullmatch(opts.device.lower()):
        raise UsageError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {opts.device!r}")
    check_dtype(opts.dtype)
    if opts.reduction is not None and opts.reduction not in REDUCTIONS:
        raise UsageError(f"--reduction must be mean or median, got {opts.reduction!r}")
    if opts.fit is not None and opts.fit not in ("stretch", "pad", "tile"):
        raise UsageError(f"--fit must be stretch, pad or tile, got {opts.fit!r}")
    if opts.fit == "tile" and not spec.tileable:
        raise UsageError(f"--fit tile is for depth: {task} has no rule to blend overlapping crops "
                         "(a crop's flow or mask cannot be fitted to its neighbours); use --fit pad or stretch")
    if opts.tiles is not None and opts.tiles < 1:
        raise UsageError(f"--tiles must be at least 1, got {opts.tiles}")
    backward = tuple(getattr(spec, "backward_formats", ()))  # files --backward adds (flow)
    if opts.backward and not backward:
        raise UsageError(f"--backward is for flow (B -> A and occlusion); {task} has no backward direction")
    if opts.schedule is not None:
        parse_schedule(opts.schedule)
    formats = spec.parse_formats(opts.format or "all")
    if asked := [f for f in formats if f in backward and not opts.backward]:
        raise UsageError(f"--format {','.join(asked)}: written with --backward; add --backward")
    return formats + tuple(f for f in backward if opts.backward and f not in formats)


def max_resolution() -> int:
    """The largest --resolution accepted: $PERCEPT_MAX_RESOLUTION, else MAX_RESOLUTION."""
    return media.env_limit(MAX_RESOLUTION_ENV, MAX_RESOLUTION)


def check_output(folder: Path) -> None:
    """Create the output folder and prove that a file can be written in it."""
    writers.ensure_folder(folder)
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".percept-probe-"):
            pass
    except OSError as e:
        raise OutputError(
            f"output folder '{folder}' is not writable ({e.strerror or e}); choose a writable folder with -o"
        ) from None


# ------------------------------------------------------------------------------------------------ 2. sources


def collect_sources(task: str, inputs: list[str], opts: Options, mask: str | None = None,
                    list_file: str | None = None, stdin: TextIO | None = None,
                    problems: list[media.Problem] | None = None) -> list[Source]:
    """Expand files, folders, globs, videos, '-' and --list into sources (media does the reading rules).

    With `problems`, inputs that cannot be used (missing, no mask...) are noted there and the rest
    returned; without, the first raises InputError.
    """
    return get_task(task).sources(inputs, opts.output, opts.recursive, mask, list_file, stdin, problems)


def shard() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun / accelerate's environment; (0, 1, 0) otherwise."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be integers; launch with torchrun") from None
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK={rank} is not within WORLD_SIZE={world}; launch with torchrun")
    return rank, world, local


def device_for_rank(device: str, local_rank: int, world: int) -> str:
    """Under torchrun each process takes its own GPU (cuda:LOCAL_RANK), or the CPU without CUDA."""
    if world == 1 or device not in ("auto", "cuda"):
        return device
    import torch

    if torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return "cpu" if device == "auto" else device  # an explicit cuda without CUDA fails in pick_device


# ------------------------------------------------------------------------------------------------ the run


def predict(task: str, inputs: list[str], opts: Options, mask: str | None = None, list_file: str | None = None,
            stdin: TextIO | None = None) -> None:
    """Run one predicting command end to end; raises a PerceptError (BatchFailed if some inputs failed)."""
    return _Run(task, opts).run(inputs, mask, list_file, stdin)


class _Run:
    """One invocation: the plan, the loaded model, open .mp4 writers and the tallies."""

    def __init__(self, task: str, opts: Options) -> None:
        self.task, self.spec, self.opts = task, get_task(task), opts
        self.out = Path(opts.output).expanduser()
        self.rank, self.world, self.local_rank = shard()
        self.console = Console(opts.quiet, prefix=f"[rank {self.rank}/{self.world}] " if self.world > 1 else "")
        self.predictor = self.settings = None
        self.stack: ExitStack | None = None  # holds the open .mp4 writers while the run streams
        self.videos: dict[Source, writers.VideoWriter] = {}
        self.states: dict[Source, Any] = {}  # each open video's Task.video_state: its frames pass through in order
        self.counts = {"ok": 0, "skipped": 0, "failed": 0}
        self.failed: list[str] = []
        self.model = opts.model
        self._ensemble: int | None = None  # the checkpoint's default ensemble, read once when needed

    def run(self, inputs: list[str], mask: str | None, list_file: str | None, stdin: TextIO | None) -> None:
        t_start = time.perf_counter()
        plan = self.plan(inputs, mask, list_file, stdin)  # 1-3
        self.stream(plan)  # 4-5
        self.report(plan, time.perf_counter() - t_start)  # 6

    # -- 1-3. planning ----------------------------------------------------------------------------

    def plan(self, inputs: list[str], mask: str | None, list_file: str | None, stdin: TextIO | None) -> Plan:
        """Check values, expand inputs (unusable ones fail alone), take this rank's shard, decide what is done."""
        self.formats = check_options(self.task, self.opts)
        self.spec = self.spec.configure(self.opts, self.console.note)  # the task's own options (depth: --align...)
        problems: list[media.Problem] = []
        sources = collect_sources(self.task, inputs, self.opts, mask, list_file, stdin, problems)
        if not sources and len(problems) == 1:
            raise InputError(problems[0].message)  # the only input: its own message is the error
        if sources:
            check_output(self.out)
        for problem in problems:
            self.report_problem(problem)
        if self.world > 1:  # a deterministic sort first: every rank sees the same list
            sources = sorted(sources, key=lambda s: media.natural_key(s.rel))[self.rank :: self.world]
        return Plan([(src, self.done(src)) for src in sources], problems)

    def report_problem(self, problem: media.Problem) -> None:
        """An input that failed while the inputs were expanded: said on stderr (rank 0), counted, recorded."""
        job = Job(Source(Path(Path(problem.inputs[0]).stem), tuple(Path(p) for p in problem.inputs)), Path(),
                  status="failed", error=problem.message)
        if self.rank == 0:
            self.emit(job)
        else:  # every rank sees the same inputs: one says so, all exit 1
            self.counts["failed"] += 1
            self.failed.append(" & ".join(problem.inputs))

    def outputs(self, rel: Path, uncertainty: bool) -> list[Path]:
        return self.spec.outputs(self.out / rel, self.formats, uncertainty)

    def mp4(self, src: Source) -> Path:
        stem = self.out / src.rel
        return stem.with_name(f"{stem.name}.{self.task}.mp4")

    def frame_indices(self, src: Source) -> list[int]:
        """Indices of the frames that name outputs (flow: every sampled frame but the last)."""
        idx = [i for i, _ in media.iter_video_frames(src.paths[0], self.opts.every, self.opts.max_frames)]
        return idx[: self.spec.jobs_from_frames(len(idx))]

    def uncertainty(self) -> bool:
        """Whether this run writes uncertainty maps: the ensemble it uses (flag > checkpoint default) is > 1."""
        if self.settings is not None:
            return self.settings.ensemble > 1
        if self.opts.ensemble is not None:
            return self.opts.ensemble > 1
        if self._ensemble is None:  # before the model loads: its config says, without loading weights
            self._ensemble = default_ensemble(self.task, self.opts.model) or 1
        return self._ensemble > 1

    def have(self, rel: Path) -> bool | str:
        """True when the outputs of `rel` exist (uncertainty maps too where this run writes them), False when
        there is work, or an error message when an output path is taken by something that is not a file."""
        base, full = self.outputs(rel, False), self.outputs(rel, True)
        extra = [p for p in full if p not in base]
        if (msg := _blocked(base)) or ((msg := _blocked(extra)) and self.uncertainty()):
            return msg
        if self.opts.overwrite or not all(p.is_file() for p in base):
            return False
        # the uncertainty maps decide only when they are missing: then the ensemble actually used says
        return all(p.is_file() for p in extra) or not self.uncertainty()

    def written(self, rel: Path) -> list[Path]:
        """The output files a skipped input has (its uncertainty maps when they are there)."""
        full = self.outputs(rel, True)
        return full if all(p.is_file() for p in full) else self.outputs(rel, False)

    def done(self, src: Source) -> bool | str:
        """True when every output exists, False when there is work, or an error message (see have)."""
        if not src.video:
            return self.have(src.rel)
        mp4 = self.mp4(src)
        if msg := _blocked([mp4]):
            return msg
        if self.opts.overwrite or not mp4.exists():
            return False
        try:
            frames = self.frame_indices(src)
        except InputError:
            return False  # reported when the video is processed (a truncated one too)
        # a frame whose output path is blocked is reported by frame_job
        return all(self.have(media.frame_item(_item(src), i).rel) is True for i in frames)

    def estimate(self, pending: list[Source]) -> int | None:
        """Jobs to run, for the progress bar; None when a video does not say its length."""
        total = 0
        for src in pending:
            frames = 1
            if src.video:
                try:
                    frames = media.video_info(src.paths[0]).frames
                except InputError:
                    frames = 1
                if frames is None:
                    return None
                n = math.ceil(frames / self.opts.every)
                frames = self.spec.jobs_from_frames(min(n, self.opts.max_frames or n))
            total += frames
        return total

    # -- 4-5. streaming ---------------------------------------------------------------------------

    def stream(self, plan: Plan) -> None:
        """Decode entries in input order, load the model with the first job to predict, then predict, write
        and report in chunks. Open .mp4 writers live on an ExitStack: any exception discards them."""
        with ExitStack() as self.stack:
            entries = self.stack.enter_context(closing(self.entries(plan)))
            head = self.head(entries)
            if any(map(_waiting, head)):
                self.load()  # before any bar starts (downloads print)
            with self.console.progress(self.estimate(plan.pending), self.task) as tracker:
                for group in self.groups(chain(head, entries)):
                    self.process(group, tracker)

    def head(self, entries: Iterator[Job | VideoEnd]) -> list[Job | VideoEnd]:
        """Entries up to the first job to predict (or a full group of entries with none)."""
        head: list[Job | VideoEnd] = []
        for entry in entries:
            head.append(entry)
            if _waiting(entry) or len(head) >= HELD * CHUNK:
                break
        return head

    def groups(self, entries: Iterable[Job | VideoEnd]) -> Iterator[list[Job | VideoEnd]]:
        """Entries in groups finished together: a chunk of jobs to predict, or HELD chunks' worth of entries."""
        group: list[Job | VideoEnd] = []
        for entry in entries:
            group.append(entry)
            if sum(map(_waiting, group)) >= self.chunk_size() or len(group) >= HELD * self.chunk_size():
                yield group
                group = []
        yield group

    def chunk_size(self) -> int:
        """Inputs per predict_iter call: at least CHUNK, and enough rows to fill one batch."""
        if self.settings is None:
            return CHUNK
        return max(CHUNK, math.ceil(self.settings.batch_size / (len(self.spec.labels) * self.settings.ensemble)))

    def load(self) -> None:
        """Resolve and load the model, then resolve settings (flag > checkpoint default > built-in)."""
        from percept_cli.hub import resolve_model
        from percept_cli.lock import default_model_name
        from percept_cli.pipeline import Predictor, pick_device

        self.model = self.opts.model or default_model_name()
        device = pick_device(device_for_rank(self.opts.device.lower(), self.local_rank, self.world))
        source = resolve_model(self.model, progress=not self.opts.quiet)
        self.console.note(f"loading model '{self.model}' on {device}")
        self.predictor = Predictor.from_source(source, device=device, dtype=self.opts.dtype, warn=self.console.warn,
                                               compile=self.opts.compile)
        o = self.opts
        self.settings = self.predictor.settings(self.task, steps=o.steps, ensemble=o.ensemble, schedule=o.schedule,
                                                seed=o.seed, resolution=o.resolution, batch_size=o.batch_size,
                                                reduction=o.reduction, fit=o.fit, tiles=o.tiles,
                                                backward=o.backward)
        self.device = str(device)

    # -- decoding ---------------------------------------------------------------------------------

    def entries(self, plan: Plan) -> Iterator[Job | VideoEnd]:
        """Jobs in input order; images decode ahead on worker threads (prefetch), videos lazily here."""
        from percept_cli.prefetch import prefetch

        for got in prefetch((partial(self.decode, src, done) for src, done in plan.todo), workers=2, depth=8):
            yield from [got] if isinstance(got, Job) else self.video_entries(got)

    def decode(self, src: Source, done: bool | str) -> Job | Source:
        """Run on a worker thread: the image's Job, or the video source to expand in `video_entries`."""
        if isinstance(done, str):  # an output path is taken by a folder
            return Job(src, src.rel, status="failed", error=done)
        if done:
            return Job(src, src.rel, status="skipped", outputs=[self.mp4(src)] if src.video else self.written(src.rel))
        if src.video:
            return src
        job = Job(src, src.rel)
        try:
            job.item = self.spec.load(src)
        except InputError as e:
            job.status, job.error = "failed", str(e)
        return job

    def video_entries(self, src: Source) -> Iterator[Job | VideoEnd]:
        """A video's jobs (the task pairs or masks its frames), then its VideoEnd; the .mp4 opens on the stack."""
        try:
            info = media.video_info(src.paths[0])
            fps = (info.fps or VIDEO_FPS) / self.opts.every
            writer = writers.VideoWriter(self.mp4(src), fps=fps, overwrite=self.opts.overwrite)
            self.videos[src] = self.stack.enter_context(writer)  # closed by finish_video
            self.states[src] = self.spec.video_state(self.opts.temporal)
            frames = media.iter_video_frames(src.paths[0], self.opts.every, self.opts.max_frames)
            for index, item in self.spec.video_inputs(src, frames):
                yield self.frame_job(src, index, item)
        except media.VideoShortError as e:  # its frames are in the stream already
            yield VideoEnd(src, short=str(e))
        except InputError as e:
            yield VideoEnd(src, str(e))
        else:
            yield VideoEnd(src)

    def frame_job(self, src: Source, index: int, item) -> Job:
        """A frame's job; skipped when its outputs exist (its .mp4 frame is then rebuilt from them)."""
        rel = media.frame_item(_item(src), index).rel
        job = Job(src, rel, frame=index, item=item)
        have = self.have(rel)
        if isinstance(have, str):
            job.status, job.error, job.item = "failed", have, None
        elif have:
            outs = self.written(rel)
            writer = self.videos.get(src)
            state = self.states.get(src)
            viz = None if writer is None or writer.skipped or state is None else state.skipped(outs, item)
            if writer is None or writer.skipped or viz is not None:
                job.status, job.outputs, job.viz, job.item = "skipped", outs, viz, None
        return job

    # -- predicting and writing -------------------------------------------------------------------

    def process(self, group: list[Job | VideoEnd], tracker) -> None:
        """Predict the group's jobs in one predict_iter call; each entry is finished (its .mp4 frame added, its
        JSON line printed) as soon as it and every entry before it are done."""
        if self.predictor is None and any(map(_waiting, group)):
            self.load()  # the first inputs all failed or were skipped
        jobs = [job for job in group if _waiting(job) and self.checked(job)]
        cursor = 0
        for _ in chain([None], self.predicted(jobs, tracker)):
            while cursor < len(group) and not _waiting(group[cursor]):  # in input order, up to the first waiting
                self.finish(group[cursor], tracker)
                cursor += 1

    def checked(self, job: Job) -> bool:
        """Whether the predictor takes the job's input; a job it refuses has failed."""
        try:
            self.predictor.check_input(self.task, job.item)
            return True
        except InputError as e:
            job.status, job.error, job.item = "failed", str(e), None
            return False

    def predicted(self, jobs: list[Job], tracker) -> Iterator[Job]:
        """Predict `jobs` together; yield each as soon as its files are written."""
        if not jobs:
            return
        s, t0 = self.settings, time.perf_counter()
        items = [j.item for j in jobs]
        parts = sum(self.predictor.parts(j.item, s) for j in jobs)  # --fit tile, --backward: several per input
        steps = tracker.steps(parts * len(self.spec.labels) * s.ensemble * s.steps)
        for n, (i, result) in enumerate(self.predictor.predict_iter(self.task, items, s, on_step=steps), start=1):
            job = jobs[i]
            state = self.states.get(job.source) if job.source.video else None
            if state is not None:  # results come in input order, so a video's frames reach its state in order
                result = state.result(result)
            try:  # a task may refuse a result (depth: an --align fit that fails); that input fails alone
                job.outputs = self.spec.write(self.out / job.rel, result, job.item, self.formats, self.opts.overwrite)
            except InputError as e:
                job.status, job.error, job.item, items[i] = "failed", str(e), None, None
                yield job  # finish() counts it
                continue
            job.extra = self.spec.record(self.out / job.rel)
            if state is not None:
                job.viz = state.visualise(result, job.item)
            job.status, job.item, items[i] = "ok", None, None  # the predictor's own references go with its cache
            job.seconds = (time.perf_counter() - t0) / n  # inputs share batches: the chunk's mean so far
            tracker.advance()
            yield job

    def finish(self, entry: Job | VideoEnd, tracker) -> None:
        """One finished entry: close a video, add a frame to its .mp4, count and report a job."""
        if isinstance(entry, VideoEnd):
            self.finish_video(entry)
            return
        writer = self.videos.get(entry.source)
        if entry.status == "failed" and writer is not None:
            self.finish_video(VideoEnd(entry.source, entry.error), quiet=True)
        elif entry.viz is not None and writer is not None:
            writer.append(entry.viz)
            entry.viz = None
        # predicted jobs advanced as they finished; sources skipped while planning are not in the total
        if entry.status == "failed" or (entry.status == "skipped" and entry.frame is not None):
            tracker.advance()
        self.emit(entry)

    def finish_video(self, end: VideoEnd, quiet: bool = False) -> None:
        """Close a video's .mp4: renamed into place when every frame went well, discarded otherwise."""
        writer = self.videos.pop(end.source, None)
        self.states.pop(end.source, None)
        if writer is not None:
            writer.close(keep=end.error is None)
        if quiet:  # the failed frame's own record says why
            return
        if end.short is not None:
            self.video_short(end, writer)
        elif writer is None:  # never opened (unreadable video), or discarded after a failed frame
            if end.error is not None:
                self.emit(Job(end.source, end.source.rel, status="failed", error=end.error))
        elif end.error is not None:
            self.emit(Job(end.source, end.source.rel, status="failed", error=end.error, outputs=[self.mp4(end.source)]))
        elif self.opts.json:
            job = Job(end.source, end.source.rel, status="skipped" if writer.skipped else "ok",
                      outputs=[self.mp4(end.source)])
            self.console.record(self.record(job) | {"frames": writer.frames})

    def video_short(self, end: VideoEnd, writer: writers.VideoWriter | None) -> None:
        """A truncated video keeps the .mp4 of the frames that decoded; the shortfall warns and counts as failed."""
        self.console.warn(end.short)
        self.counts["failed"] += 1
        self.failed.append(str(end.source.paths[0]))
        if self.opts.json:
            mp4 = self.mp4(end.source)
            job = Job(end.source, end.source.rel, status="failed", error=end.short,
                      outputs=[mp4] if mp4.is_file() else [])
            self.console.record(self.record(job) | {"frames": writer.frames if writer is not None else 0})

    def emit(self, job: Job) -> None:
        """Count one finished job, report a failure on stderr, print its --json record."""
        if job.status == "failed":
            self.console.error(job.error)
            src = job.source
            if job.frame is not None:
                self.failed.append(f"{src.paths[0]} frame {job.frame}")
            else:
                self.failed.append(str(src.paths[0]) if src.video else " & ".join(map(str, src.paths)))
        self.counts[job.status] += 1
        if self.opts.json:
            self.console.record(self.record(job))

    def record(self, job: Job) -> dict[str, Any]:
        return {
            "task": self.task,
            "inputs": [str(p) for p in job.source.paths],
            "frame": job.frame,
            "outputs": [str(p) for p in job.outputs],
            "status": job.status,
            "error": job.error,
            "seconds": round(job.seconds, 4),
            "model": self.model,
            "settings": None if self.settings is None or job.status == "skipped" else
            self.settings.as_dict() | {"device": self.device, "dtype": self.predictor.dtype_name},
            "rank": self.rank,
        } | job.extra

    # -- 6. report --------------------------------------------------------------------------------

    def report(self, plan: Plan, seconds: float) -> None:
        """The summary line; BatchFailed (exit 1) naming the inputs that failed."""
        c = self.counts
        if not plan.todo:
            if not plan.problems:
                self.console.note("no inputs for this rank")
        elif not plan.pending:
            self.console.note(f"every input has its outputs in '{self.out}' already; nothing to do "
                              "(pass --overwrite to predict again)")
        else:
            self.console.note(f"{self.task}: {c['ok']} done, {c['skipped']} skipped, {c['failed']} failed "
                              f"in {seconds:.1f} s -> {self.out}")
        if self.failed:
            more = len(self.failed) - 10
            listed = ", ".join(self.failed[:10]) + (f" and {more} more" if more > 0 else "")
            raise BatchFailed(f"{len(self.failed)} of {sum(c.values())} inputs failed: {listed}; "
                              "fix them (see the errors above) and re-run: finished outputs are kept")


# ------------------------------------------------------------------------------------------------ helpers


def _blocked(paths: list[Path]) -> str | None:
    """An error message when an output path is taken by a folder (or anything but a file), else None."""
    for p in paths:
        if p.exists() and not p.is_file():
            what = "a folder" if p.is_dir() else "not a regular file"
            return (f"output '{p}' is {what}, so the file cannot be written there; remove or rename it, "
                    "or choose another output folder with -o")
    return None


def default_ensemble(task: str, model: str | None) -> int | None:
    """The checkpoint's default ensemble size for `task`, read from its config without loading weights.

    None when that needs a download or the config cannot be read (the caller then assumes 1).
    """
    from percept_cli.errors import PerceptError

    try:
        from percept_cli.checkpoints import OFFICIAL_PIPELINE
        from percept_cli.hub import resolve_model
        from percept_cli.lock import default_model_name, read_json

        source = resolve_model(model or default_model_name(), download=False, progress=False)
        if source.layout == "official":
            config = {**OFFICIAL_PIPELINE, **source.config}
        else:
            pjson = source.root / "percept.json" if source.root is not None else None
            config = {**(read_json(pjson, {}) if pjson is not None else {}), **source.config}
        # as Predictor.settings picks it: the task's own key, then the model's, then the built-in default
        value = config.get(f"{task}_ensemble")
        value = value if value is not None else config.get("ensemble", 1)  # pipeline.DEFAULTS: 1
        return int(value)
    except (PerceptError, OSError, ValueError, TypeError):
        return None


def _item(src: Source) -> media.InputItem:
    return media.InputItem(src.paths[0], src.rel)
