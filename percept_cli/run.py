"""The one implementation behind `percept depth`, `percept flow` and `percept amodal`.

  1. validate option values at the edge: before any file is decoded or any model is loaded
  2. expand the inputs into sources (media.collect_*), check the output folder; under torchrun
     take this rank's shard. An input that cannot be used (missing, not an image, no mask) fails
     alone: it is reported and the rest go on
  3. drop sources whose outputs all exist (unless --overwrite; uncertainty maps count when the
     ensemble actually used, flag or checkpoint default, has more than one member); nothing left
     -> no model load
  4. resolve and load the model once, when the first input has decoded; settings = flag >
     checkpoint default > built-in default
  5. stream jobs (one per image, pair or video frame) in chunks through Predictor.predict_iter;
     a bad input fails alone, every file is written atomically by writers
  6. report: one JSON record per input (--json) as soon as its files are written, in input order;
     a summary line; BatchFailed (exit 1) if anything failed, a truncated video included (its
     decoded frames are written, the shortfall is a warning and counts as a failure)

torch is imported only in step 4, so planning and `--help` stay light.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, TextIO

import numpy as np

from percept_cli import media, writers
from percept_cli.console import Console
from percept_cli.tasks import get_task  # numpy only: no torch at planning time
from percept_cli.dtypes import check_dtype  # no torch at planning time
from percept_cli.errors import InputError, OutputError, UsageError

TASKS = ("depth", "flow", "amodal")
REDUCTIONS = ("mean", "median")
DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
CHUNK = 32  # inputs decoded and predicted together: bounded memory, full batches
VIDEO_FPS = 10.0  # for the .mp4 when the container does not say
MAX_RESOLUTION_ENV = "PERCEPT_MAX_RESOLUTION"
MAX_RESOLUTION = 4096  # px per side of the processing grid; 100000 would ask for 120 GB
_OUTPUTS = {"depth": writers.depth_outputs, "flow": writers.flow_outputs, "amodal": writers.amodal_outputs}


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
    fit: str | None = None  # stretch | pad (pipeline.FITS)
    compile: bool = False  # torch.compile the denoiser (GPUs)
    output: Path = Path("percept-out")
    format: str | None = None  # comma list; None = every format of the task
    overwrite: bool = False
    json: bool = False
    quiet: bool = False
    recursive: bool = False
    every: int = 1
    max_frames: int | None = None


@dataclass(frozen=True)
class Source:
    """One planned input before decoding."""

    rel: Path  # output stem under OUT; for a video, the folder of its per-frame outputs
    paths: tuple[Path, ...]  # (image,) | (frame1, frame2) | (image, mask) | (video,) | (video, mask)
    video: bool = False


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


@dataclass
class VideoEnd:
    """Marks the end of a video's frames in the job stream; its .mp4 is finished (or discarded) here."""

    source: Source
    error: str | None = None
    short: str | None = None  # fewer frames decoded than declared: the .mp4 is kept, the video counts as failed


# ------------------------------------------------------------------------------------------------ 1. edge checks


def check_options(task: str, opts: Options) -> tuple[str, ...]:
    """Validate values that need no model; returns the parsed formats. UsageError names the option and fix."""
    from percept_cli.schedules import parse_schedule

    assert task in TASKS, task
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
    if opts.fit is not None and opts.fit not in ("stretch", "pad"):
        raise UsageError(f"--fit must be stretch or pad, got {opts.fit!r}")
    if opts.schedule is not None:
        parse_schedule(opts.schedule)
    return writers.parse_formats(opts.format or "all", task)


def max_resolution() -> int:
    """The largest --resolution accepted: $PERCEPT_MAX_RESOLUTION, else MAX_RESOLUTION."""
    raw = os.environ.get(MAX_RESOLUTION_ENV, "").strip()
    if not raw:
        return MAX_RESOLUTION
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"{MAX_RESOLUTION_ENV}={raw!r} is not a positive whole number of pixels; "
                         f"set e.g. {MAX_RESOLUTION_ENV}={MAX_RESOLUTION} or unset it")
    return value


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
    out = opts.output
    if task == "depth":
        if list_file is not None:
            raise UsageError("depth takes images, folders, globs or '-' (paths on stdin), not --list; drop --list")
        items = media.collect_images(inputs, recursive=opts.recursive, stdin=stdin, exclude=out, problems=problems)
        return [Source(it.rel, (it.path,), media.is_video(it.path)) for it in items]
    if task == "flow":
        if mask is not None:
            raise UsageError("--mask is for amodal; flow takes A B, a video, a folder of frames or --list FILE")
        pairs = media.collect_pairs(inputs, recursive=opts.recursive, list_file=list_file, stdin=stdin, exclude=out,
                                    problems=problems)
        return [Source(a.rel, (a.path,), True) if a.path == b.path and media.is_video(a.path)
                else Source(a.rel, (a.path, b.path)) for a, b in pairs]
    pairs = media.collect_image_mask_pairs(inputs, mask=mask, list_file=list_file, recursive=opts.recursive,
                                           stdin=stdin, exclude=out, problems=problems)
    return [Source(it.rel, (it.path, m), media.is_video(it.path)) for it, m in pairs]


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
        self.task, self.opts = task, opts
        self.out = Path(opts.output).expanduser()
        self.rank, self.world, self.local_rank = shard()
        self.console = Console(opts.quiet, prefix=f"[rank {self.rank}/{self.world}] " if self.world > 1 else "")
        self.predictor = self.settings = None
        self.videos: dict[Source, writers.VideoWriter] = {}
        self.counts = {"ok": 0, "skipped": 0, "failed": 0}
        self.failed: list[str] = []
        self.model = opts.model
        self._ensemble: int | None = None  # the checkpoint's default ensemble, read once when needed

    # -- planning ---------------------------------------------------------------------------------

    def outputs(self, rel: Path, uncertainty: bool) -> list[Path]:
        return _OUTPUTS[self.task](self.out / rel, self.formats, uncertainty)

    def mp4(self, src: Source) -> Path:
        stem = self.out / src.rel
        return stem.with_name(f"{stem.name}.{self.task}.mp4")

    def frame_indices(self, src: Source) -> list[int]:
        """Indices of the frames that name outputs (flow: every sampled frame but the last)."""
        idx = [i for i, _ in media.iter_video_frames(src.paths[0], self.opts.every, self.opts.max_frames)]
        return idx[:-1] if self.task == "flow" else idx

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
            if not src.video:
                total += 1
                continue
            try:
                frames = media.video_info(src.paths[0]).frames
            except InputError:
                frames = 1
            if frames is None:
                return None
            n = math.ceil(frames / self.opts.every)
            n = min(n, self.opts.max_frames or n)
            total += max(n - (self.task == "flow"), 0)
        return total

    # -- 1-6 --------------------------------------------------------------------------------------

    def run(self, inputs: list[str], mask: str | None, list_file: str | None, stdin: TextIO | None) -> None:
        t_start = time.perf_counter()
        # 1. values and formats, before anything is read
        self.formats = check_options(self.task, self.opts)
        # 2. sources, and this rank's shard of them (a deterministic sort first: every rank sees the same list)
        # inputs that cannot be used fail alone: reported first, the others go on
        problems: list[media.Problem] = []
        sources = collect_sources(self.task, inputs, self.opts, mask, list_file, stdin, problems)
        if not sources and len(problems) == 1:
            raise InputError(problems[0].message)  # the only input: its own message is the error
        if sources:
            check_output(self.out)
        for problem in problems:
            self.report_problem(problem)
        if self.world > 1:
            sources = sorted(sources, key=lambda s: media.natural_key(s.rel))[self.rank :: self.world]
        # 3. resume: sources whose outputs all exist are skipped (and reported in input order)
        plan = [(src, self.done(src)) for src in sources]
        pending = [src for src, done in plan if done is not True]
        # 4-5. stream jobs through the predictor in chunks; the model loads with the first decodable input
        stream = self.stream(plan)
        try:
            # decode up to the first good input, then load the model before any bar starts (downloads print)
            entries: list[Job | VideoEnd] = []
            for entry in stream:
                entries.append(entry)
                if (isinstance(entry, Job) and entry.status == "pending") or len(entries) >= 8 * CHUNK:
                    break
            waiting = sum(isinstance(e, Job) and e.status == "pending" for e in entries)  # pending jobs in entries
            if waiting:
                self.load()
            with self.console.progress(self.estimate(pending), f"{self.task}") as tracker:
                for entry in stream:
                    entries.append(entry)
                    waiting += isinstance(entry, Job) and entry.status == "pending"
                    # a full chunk to predict, or many skipped frames holding their .mp4 frames
                    if waiting >= self.chunk_size() or len(entries) >= 8 * self.chunk_size():
                        self.process(entries, tracker)
                        entries, waiting = [], 0
                self.process(entries, tracker)
        except BaseException as e:  # KeyboardInterrupt too: no half-made .mp4 stays behind
            for writer in self.videos.values():
                writer.__exit__(type(e), e, e.__traceback__)
            self.videos.clear()
            raise
        finally:
            stream.close()
        # 6. report
        c = self.counts
        if not sources:
            if not problems:
                self.console.note("no inputs for this rank")
        elif not pending:
            self.console.note(f"every input has its outputs in '{self.out}' already; nothing to do "
                              "(pass --overwrite to predict again)")
        else:
            self.console.note(f"{self.task}: {c['ok']} done, {c['skipped']} skipped, {c['failed']} failed "
                              f"in {time.perf_counter() - t_start:.1f} s -> {self.out}")
        if self.failed:
            more = len(self.failed) - 10
            listed = ", ".join(self.failed[:10]) + (f" and {more} more" if more > 0 else "")
            total = sum(c.values())
            raise BatchFailed(f"{len(self.failed)} of {total} inputs failed: {listed}; "
                              "fix them (see the errors above) and re-run: finished outputs are kept")

    def report_problem(self, problem: media.Problem) -> None:
        """An input that failed while the inputs were expanded: said on stderr (rank 0), counted, recorded."""
        job = Job(Source(Path(Path(problem.inputs[0]).stem), tuple(Path(p) for p in problem.inputs)), Path(),
                  status="failed", error=problem.message)
        if self.rank == 0:
            self.emit(job)
        else:  # every rank sees the same inputs: one says so, all exit 1
            self.counts["failed"] += 1
            self.failed.append(" & ".join(problem.inputs))

    def chunk_size(self) -> int:
        """Inputs per predict_iter call: at least CHUNK, and enough rows to fill one batch."""
        if self.settings is None:
            return CHUNK
        return max(CHUNK, math.ceil(self.settings.batch_size / (len(get_task(self.task).labels) * self.settings.ensemble)))

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
                                                reduction=o.reduction, fit=o.fit)
        self.device = str(device)

    # -- decoding ---------------------------------------------------------------------------------

    def stream(self, plan: list[tuple[Source, bool]]) -> Iterator[Job | VideoEnd]:
        """Jobs in input order; images decode ahead on worker threads (prefetch), videos lazily here."""
        from percept_cli.prefetch import prefetch

        def job_for(src: Source, done: bool | str):
            """A callable run on a worker thread: the image's Job, or the video source to expand here."""
            def decode() -> Job | Source:
                if isinstance(done, str):  # an output path is taken by a folder
                    return Job(src, src.rel, status="failed", error=done)
                if done:
                    outs = [self.mp4(src)] if src.video else self.written(src.rel)
                    return Job(src, src.rel, status="skipped", outputs=outs)
                if src.video:
                    return src
                job = Job(src, src.rel)
                try:
                    job.item = load_input(self.task, src)
                except InputError as e:
                    job.status, job.error = "failed", str(e)
                return job
            return decode

        for got in prefetch((job_for(src, done) for src, done in plan), workers=2, depth=8):
            if isinstance(got, Job):
                yield got
                continue
            src = got
            try:
                info = media.video_info(src.paths[0])
                fps = (info.fps or VIDEO_FPS) / self.opts.every
                writer = writers.VideoWriter(self.mp4(src), fps=fps, overwrite=self.opts.overwrite)
                self.videos[src] = writer.__enter__()  # closed in finish_video, or discarded on any exception
                yield from self.video_jobs(src)
            except media.VideoShortError as e:  # its frames are in the stream already
                yield VideoEnd(src, short=str(e))
                continue
            except InputError as e:
                yield VideoEnd(src, str(e))
                continue
            yield VideoEnd(src)

    def video_jobs(self, src: Source) -> Iterator[Job]:
        """One job per sampled frame (flow: per pair of consecutive sampled frames)."""
        from percept_cli.pipeline import TaskInput

        video = src.paths[0]
        visible, prev, n = None, None, 0
        for index, frame in media.iter_video_frames(video, self.opts.every, self.opts.max_frames):
            n += 1
            if self.task == "amodal" and visible is None:
                visible = media.read_mask(src.paths[1], like_shape=frame.shape, image=video)
            if self.task == "flow":
                if prev is not None:
                    yield self.frame_job(src, prev[0], TaskInput(prev[1], frame, name=f"{video} frame {prev[0]}"))
                prev = (index, frame)
            else:
                yield self.frame_job(src, index, TaskInput(frame, visible, name=f"{video} frame {index}"))
        if self.task == "flow" and n < 2:
            raise InputError(f"video '{video}' gives only one frame here; flow needs two: lower --every "
                             "or raise --max-frames")

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
            viz = None if writer is None or writer.skipped else viz_from_outputs(self.task, outs, item)
            if writer is None or writer.skipped or viz is not None:
                job.status, job.outputs, job.viz, job.item = "skipped", outs, viz, None
        return job

    # -- predicting and writing -------------------------------------------------------------------

    def process(self, entries: list[Job | VideoEnd], tracker) -> None:
        """Predict the chunk's pending jobs in one predict_iter call; each entry is finished (its .mp4 frame
        added, its JSON line printed) as soon as it and every entry before it are done."""
        if self.predictor is None and any(isinstance(e, Job) and e.status == "pending" for e in entries):
            self.load()  # the first inputs all failed or were skipped
        pending = []
        for job in entries:
            if isinstance(job, Job) and job.status == "pending":
                try:
                    self.predictor.check_input(self.task, job.item)
                    pending.append(job)
                except InputError as e:
                    job.status, job.error, job.item = "failed", str(e), None
        cursor = 0

        def flush() -> None:
            """Finish entries in input order up to the first one still being predicted."""
            nonlocal cursor
            while cursor < len(entries):
                entry = entries[cursor]
                if isinstance(entry, Job) and entry.status == "pending":
                    return
                self.finish(entry, tracker)
                cursor += 1

        flush()  # skipped and failed inputs before the first prediction are reported now
        if pending:
            s = self.settings
            rows = len(pending) * len(get_task(self.task).labels) * s.ensemble * s.steps
            t0 = time.perf_counter()
            items = [j.item for j in pending]
            for n, (i, result) in enumerate(self.predictor.predict_iter(self.task, items, s,
                                                                         on_step=tracker.steps(rows)), start=1):
                job = pending[i]
                job.outputs = self.write(job, result)
                if job.source.video:
                    job.viz = visualise(self.task, result, job.item)
                job.status, job.item = "ok", None
                items[i] = None  # the predictor's own references go with its cache
                job.seconds = (time.perf_counter() - t0) / n  # inputs share batches: the chunk's mean so far
                tracker.advance()
                flush()
        flush()

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

    def write(self, job: Job, r) -> list[Path]:
        stem, o = self.out / job.rel, self.opts
        if self.task == "depth":
            return writers.write_depth(stem, r.depth, r.uncertainty, self.formats, overwrite=o.overwrite)
        if self.task == "flow":
            return writers.write_flow(stem, r.flow, r.uncertainty, self.formats, overwrite=o.overwrite)
        return writers.write_amodal(stem, r.mask, r.soft, job.item.image, r.uncertainty, self.formats,
                                    overwrite=o.overwrite)

    def finish_video(self, end: VideoEnd, quiet: bool = False) -> None:
        """Close a video's .mp4: renamed into place when every frame went well, discarded otherwise.

        A truncated video (end.short) keeps the .mp4 of the frames that decoded; the shortfall is a
        warning and the video counts as failed, so the run exits 1.
        """
        writer = self.videos.pop(end.source, None)
        if writer is not None:
            if end.error is None:
                writer.__exit__(None, None, None)
            else:
                writer.__exit__(InputError, InputError(end.error), None)
        if quiet:  # the failed frame's own record says why
            return
        if end.short is not None:
            self.console.warn(end.short)
            self.counts["failed"] += 1
            self.failed.append(str(end.source.paths[0]))
            if self.opts.json:
                job = Job(end.source, end.source.rel, status="failed", error=end.short,
                          outputs=[self.mp4(end.source)] if self.mp4(end.source).is_file() else [])
                self.console.record(self.record(job) | {"frames": writer.frames if writer is not None else 0})
            return
        if writer is None:  # never opened (unreadable video), or discarded after a failed frame
            if end.error is not None:
                self.emit(Job(end.source, end.source.rel, status="failed", error=end.error))
            return
        status = "failed" if end.error is not None else "skipped" if writer.skipped else "ok"
        job = Job(end.source, end.source.rel, status=status, error=end.error, outputs=[self.mp4(end.source)])
        if status == "failed":
            self.emit(job)
        elif self.opts.json:
            self.console.record(self.record(job) | {"frames": writer.frames})

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
        }


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
        from percept_cli.lock import default_model_name

        source = resolve_model(model or default_model_name(), download=False, progress=False)
        if source.layout == "official":
            config = {**OFFICIAL_PIPELINE, **source.config}
        else:
            pjson = source.root / "percept.json" if source.root is not None else None
            config = {**(json.loads(pjson.read_text()) if pjson is not None and pjson.is_file() else {}),
                      **source.config}
        # as Predictor.settings picks it: the task's own key, then the model's, then the built-in default
        value = config.get(f"{task}_ensemble")
        value = value if value is not None else config.get("ensemble", 1)  # pipeline.DEFAULTS: 1
        return int(value)
    except (PerceptError, OSError, ValueError, TypeError):
        return None


def _item(src: Source) -> media.InputItem:
    return media.InputItem(src.paths[0], src.rel)


def _size(img: np.ndarray) -> str:
    return f"{img.shape[1]}x{img.shape[0]}"


def load_input(task: str, src: Source):
    """Decode one non-video source into a TaskInput; InputError names the file(s) and the fix."""
    from percept_cli.pipeline import TaskInput

    if task == "depth":
        return TaskInput(media.read_image(src.paths[0]), name=str(src.paths[0]))
    if task == "flow":
        a, b = src.paths
        f1, f2 = media.read_image(a), media.read_image(b)
        if f1.shape != f2.shape:
            # Refused, not resized: a silent resize would change what the flow vectors measure.
            raise InputError(
                f"flow frames '{a}' ({_size(f1)}) and '{b}' ({_size(f2)}) differ in size (width x height); "
                f"flow needs two frames of one size: resize or crop '{b}' to {_size(f1)}"
            )
        return TaskInput(f1, f2, name=str(a))
    image, visible = src.paths
    img = media.read_image(image)
    return TaskInput(img, media.read_mask(visible, like_shape=img.shape, image=image), name=str(image))


def visualise(task: str, result, item) -> np.ndarray:
    """The (H, W, 3) uint8 frame a video's .mp4 shows: depth colours, the flow wheel, the mask overlay."""
    if task == "depth":
        return writers.colorize_depth(result.depth)
    if task == "flow":
        return writers.flow_to_color(result.flow)
    return writers.overlay_mask(item.image, result.mask)


def viz_from_outputs(task: str, outputs: list[Path], item) -> np.ndarray | None:
    """Rebuild a skipped frame's .mp4 frame from its files on disk; None if none can be read."""

    def find(suffix: str) -> Path | None:
        return next((p for p in outputs if p.name.endswith(suffix)), None)

    readers = {  # the visualisation file itself first, then any numeric output
        "depth": ((".depth.color.png", media.read_image),
                  (".depth.npy", lambda p: writers.colorize_depth(np.load(p))),
                  (".depth.png", lambda p: writers.colorize_depth(writers.read_png16(p)))),
        "flow": ((".flow.png", media.read_image),
                 (".flow.flo", lambda p: writers.flow_to_color(writers.read_flo(p))),
                 (".flow.npy", lambda p: writers.flow_to_color(np.load(p)))),
        "amodal": ((".amodal.overlay.png", media.read_image),
                   (".amodal.png", lambda p: writers.overlay_mask(item.image, media.read_mask(p))),
                   (".amodal.npy", lambda p: writers.overlay_mask(item.image, np.load(p) >= 0.5))),
    }
    for suffix, read in readers[task]:
        if (path := find(suffix)) is not None:
            try:
                return read(path)
            except (InputError, OSError, ValueError):
                return None
    return None
