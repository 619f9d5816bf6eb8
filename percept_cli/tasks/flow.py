"""Optical flow: forward flow frame 1 -> frame 2 in pixels (u right, v down) from a frame pair.

Official conventions (official-checkpoint.md section 3): labels 1002 (u) and 1003 (v); prompt =
frame 2; target = one component / flow_scale, repeated to 3 channels. The generalist's flow_scale
is (75, 100): its training data divided u by 75 and, through a dataset bug, left v in 384-row
units, so v pixels on the 512 grid are output * 75 * 512/384 = output * 100.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from percept_cli.errors import InputError, UsageError
from percept_cli.tasks.base import Source, Task, TaskInput, check_map, gray3, to_unit, uncertainty_writers, write_plan



@dataclass
class FlowResult:
    flow: np.ndarray  # (H, W, 2) float32 forward flow frame 1 -> 2 in input pixels (u right, v down)
    uncertainty: np.ndarray | None  # (H, W) float32 RMS end-point spread of the members, pixels
    backward: np.ndarray | None = None  # (H, W, 2) float32 flow frame 2 -> 1 (--backward), at frame 2's pixels
    occlusion: np.ndarray | None = None  # (H, W) bool: frame-1 pixels failing the forward-backward check


# Forward-backward consistency (Sundaram, Brox & Keutzer 2010; the UnFlow form, Meister et al. 2018):
# a frame-1 pixel x is occluded (or its flow wrong) unless
#     |w_f(x) + w_b(x + w_f(x))|^2 < ALPHA * (|w_f(x)|^2 + |w_b(x + w_f(x))|^2) + BETA   (pixels^2)
# with w_b sampled bilinearly at x + w_f(x). A pixel whose forward flow leaves the frame has no
# counterpart in frame 2 and counts as occluded too.
OCCLUSION_ALPHA, OCCLUSION_BETA = 0.01, 0.5


def occlusion_mask(forward: np.ndarray, backward: np.ndarray, alpha: float = OCCLUSION_ALPHA,
                   beta: float = OCCLUSION_BETA) -> np.ndarray:
    """(H, W) bool, True = occluded: the forward-backward consistency check on flows (H, W, 2) in pixels."""
    import cv2

    fw, bw = np.asarray(forward, np.float32), np.asarray(backward, np.float32)
    if fw.shape != bw.shape or fw.ndim != 3 or fw.shape[2] != 2:
        raise ValueError(f"forward and backward flow must both be (H, W, 2), got {fw.shape} and {bw.shape}")
    h, w = fw.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    mx, my = xx + fw[..., 0], yy + fw[..., 1]  # where each frame-1 pixel lands in frame 2
    bw_at = cv2.remap(bw, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)  # (H, W, 2) w_b(x + w_f)
    err = np.sum((fw + bw_at) ** 2, axis=-1)
    bound = alpha * (np.sum(fw ** 2, axis=-1) + np.sum(bw_at ** 2, axis=-1)) + beta
    outside = (mx < 0) | (mx > w - 1) | (my < 0) | (my > h - 1)
    return (err >= bound) | outside


def flow_targets(flow: np.ndarray, flow_scale: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(..., H, W, 2) pixels -> the u and v targets (..., 3, H, W) each, divided by flow_scale, clipped to [-1, 1]."""
    u = np.clip(flow[..., 0] / flow_scale[0], -1, 1).astype(np.float32)
    v = np.clip(flow[..., 1] / flow_scale[1], -1, 1).astype(np.float32)
    return gray3(u), gray3(v)


def _size(img: np.ndarray) -> str:
    return f"{img.shape[1]}x{img.shape[0]}"


class Flow(Task):
    name, labels, kinds, extra = "flow", (1002, 1003), ("flow_u", "flow_v"), "frame"
    names = (("flo", ".flow.flo"), ("png", ".flow.png"), ("npy", ".flow.npy"),
             ("backward", ".flow.backward.flo"), ("occlusion", ".flow.occlusion.png"))
    backward_formats = ("backward", "occlusion")  # written with --backward only; not part of 'all'
    numeric = frozenset({"flo", "npy"})
    reduction = "mean"
    dataset = "flyingchairs"

    # -- inputs: a pair of frames; a video gives its consecutive sampled frames ----------------------

    def sources(self, inputs, out, recursive, mask, list_file, stdin, problems):
        from percept_cli import media

        if mask is not None:
            raise UsageError("--mask is for amodal; flow takes A B, a video, a folder of frames or --list FILE")
        pairs = media.collect_pairs(inputs, recursive=recursive, list_file=list_file, stdin=stdin, exclude=out,
                                    problems=problems)
        return [Source(a.rel, (a.path,), True) if a.path == b.path and media.is_video(a.path)
                else Source(a.rel, (a.path, b.path)) for a, b in pairs]

    def load(self, src):
        from percept_cli import media

        a, b = src.paths
        f1, f2 = media.read_image(a), media.read_image(b)
        if f1.shape != f2.shape:
            # Refused, not resized: a silent resize would change what the flow vectors measure.
            raise InputError(
                f"flow frames '{a}' ({_size(f1)}) and '{b}' ({_size(f2)}) differ in size (width x height); "
                f"flow needs two frames of one size: resize or crop '{b}' to {_size(f1)}"
            )
        return TaskInput(f1, f2, name=str(a))

    def video_inputs(self, src, frames):
        video, prev, n = src.paths[0], None, 0
        for index, frame in frames:
            n += 1
            if prev is not None:
                yield prev[0], TaskInput(prev[1], frame, name=f"{video} frame {prev[0]}")
            prev = (index, frame)
        if n < 2:
            raise InputError(f"video '{video}' gives only one frame here; flow needs two: lower --every "
                             "or raise --max-frames")

    def jobs_from_frames(self, n):
        return max(n - 1, 0)  # consecutive pairs

    def check_input(self, item):
        img, e = item.image, item.extra
        if not (isinstance(e, np.ndarray) and e.shape == img.shape and e.dtype == np.uint8):
            raise InputError(
                f"{item.name}: frame 2 must be a uint8 RGB image of the same size as frame 1 "
                f"{img.shape[1]}x{img.shape[0]}, got {getattr(e, 'shape', None)}; resize one of them"
            )

    # -- the model's side ---------------------------------------------------------------------------

    def prompt(self, image, extra):
        return to_unit(extra)  # frame 2

    def train_pair(self, kind, scene, flipped, flow_scale):
        flow = scene("flow")  # (n, H, W, 2)
        flow[flipped, ..., 0] *= -1  # mirrored motion
        u, v = flow_targets(flow, flow_scale)
        return self.prompt(scene("rgb"), scene("rgb2")), u if kind == "flow_u" else v

    def decode(self, decoded, config):
        su, sv = config.get("flow_scale", (75.0, 100.0))
        return np.stack([decoded[0].mean(axis=1) * su, decoded[1].mean(axis=1) * sv], axis=-1)  # (E, h, w, 2)

    def finish(self, values, to_input, reduction, config):
        from percept_cli.ensemble import ensemble_flow

        flow, unc = ensemble_flow(values, reduction=reduction or self.reduction)
        sx, sy = to_input.scale
        flow = to_input.resize(flow) * np.array([sx, sy], np.float32)  # grid px -> input px
        if unc is not None:
            unc = to_input.resize(unc) * float(np.sqrt(sx * sy))
        return FlowResult(flow.astype(np.float32), unc)

    # -- outputs ------------------------------------------------------------------------------------

    def with_backward(self, forward: FlowResult, backward: FlowResult) -> FlowResult:
        """--backward: the forward result with the B -> A flow and the occlusion mask of the consistency check."""
        return FlowResult(forward.flow, forward.uncertainty, backward.flow, occlusion_mask(forward.flow, backward.flow))

    def parse_formats(self, text):
        forward = ",".join(f for f in self.formats if f not in self.backward_formats)
        return super().parse_formats(",".join(forward if v.strip().lower() == "all" else v for v in str(text).split(",")))

    def plan(self, stem, formats, uncertainty):
        """The forward files (and their uncertainty maps) as any task's, then the --backward files."""
        chosen = self.parse_formats(formats if isinstance(formats, str) else ",".join(formats))
        forward = [f for f in chosen if f not in self.backward_formats]
        plan = super().plan(stem, forward, uncertainty) if forward else {}
        stem = Path(stem)
        return plan | {fmt: stem.with_name(stem.name + suffix) for fmt, suffix in self.names
                       if fmt in self.backward_formats and fmt in chosen}

    def write(self, stem, result, item, formats, overwrite):
        return write_flow(stem, result.flow, result.uncertainty, formats, overwrite=overwrite,
                          backward=result.backward, occlusion=result.occlusion)

    def visualise(self, result, item):
        from percept_cli.writers import flow_to_color

        return flow_to_color(result.flow)

    def video_state(self, temporal=True):
        from percept_cli.temporal import FlowVideo

        return FlowVideo(self, temporal)

    def viz_readers(self, item):
        from percept_cli import media, writers as W

        return ((".flow.png", media.read_image),
                (".flow.flo", lambda p: W.flow_to_color(W.read_flo(p))),
                (".flow.npy", lambda p: W.flow_to_color(np.load(p))))

    # -- evaluation ---------------------------------------------------------------------------------

    def sample(self, scene, name):
        from percept_cli.data.datasets import FlowSample

        return FlowSample(scene.rgb, scene.rgb2, scene.flow, np.ones(scene.depth.shape, bool), name)

    def read_dataset(self, root):
        from percept_cli.data.datasets import read_flyingchairs

        return read_flyingchairs(Path(root))

    def eval_input(self, sample):
        return TaskInput(sample.rgb1, sample.rgb2, sample.name)

    def score(self, sample, pred):
        from percept_cli import metrics

        return {"epe": metrics.flow_epe(getattr(pred, "flow", pred), sample.flow, sample.valid)}

    def baselines(self, samples):
        from percept_cli import baselines

        return {"zero flow": lambda s: baselines.zero_flow(*s.flow.shape[:2]),
                "OpenCV DIS (medium)": lambda s: baselines.dis_flow(s.rgb1, s.rgb2)}


TASK = Flow()
FORMATS = TASK.formats  # --format values, in write order


def flow_outputs(stem: str | os.PathLike[str], formats: str | Sequence[str], uncertainty: bool) -> list[Path]:
    """Paths write_flow would write for `stem` (OUT/rel)."""
    return TASK.outputs(stem, formats, uncertainty)


def write_flow(stem: str | os.PathLike[str], flow: np.ndarray, uncertainty: np.ndarray | None,
               formats: str | Sequence[str], overwrite: bool = False, backward: np.ndarray | None = None,
               occlusion: np.ndarray | None = None) -> list[Path]:
    """Write forward flow (H, W, 2) in pixels and its uncertainty; existing files are kept unless overwrite.

    Formats backward (NAME.flow.backward.flo) and occlusion (NAME.flow.occlusion.png, 0/255, 255 =
    occluded) need `backward` (H, W, 2) and `occlusion` (H, W) bool (Flow.with_backward gives both).
    """
    from percept_cli import writers as W

    flow = W.check_flow(flow).astype(np.float32)
    check_map(uncertainty, flow.shape[:2], "uncertainty")
    check_map(backward, flow.shape, "backward")
    check_map(occlusion, flow.shape[:2], "occlusion")
    plan = TASK.plan(stem, formats, uncertainty is not None)
    for fmt, arr in (("backward", backward), ("occlusion", occlusion)):
        if fmt in plan and arr is None:
            raise ValueError(f"the {fmt} format needs the backward flow: predict with --backward (backward=True)")
    return write_plan(plan, {
        "flo": lambda p: W.write_flo(p, flow),
        "png": lambda p: W.write_png8(p, W.flow_to_color(flow)),
        "npy": lambda p: W.write_npy(p, flow),
        "backward": lambda p: W.write_flo(p, np.asarray(backward, np.float32)),
        "occlusion": lambda p: W.write_png8(p, np.asarray(occlusion, bool).astype(np.uint8) * 255),
        **uncertainty_writers(uncertainty),
    }, overwrite)
