"""Amodal segmentation: the whole object behind occluders, from an image and its visible mask.

Official conventions (official-checkpoint.md section 3): label 1001; prompt = the visible mask in
{-1, +1}; target = the whole object on white, RGB. Members are averaged as images; the mask is
where the result is darker than `amodal_threshold` (ensemble.ensemble_amodal).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from percept_cli.errors import InputError
from percept_cli.tasks.base import Source, Task, TaskInput, check_map, gray3, to_unit, uncertainty_writers, write_plan



@dataclass
class AmodalResult:
    mask: np.ndarray  # (H, W) bool: the whole object, hidden parts included
    soft: np.ndarray  # (H, W) float32 in [0, 1]: foreground probability
    image: np.ndarray  # (H, W, 3) uint8: the whole object's appearance on white
    uncertainty: np.ndarray | None  # (H, W) float32: fraction of members disagreeing with the mask


def amodal_target(whole_rgb: np.ndarray) -> np.ndarray:
    return to_unit(whole_rgb)


class Amodal(Task):
    name, labels, extra = "amodal", (1001,), "mask"
    names = (("png", ".amodal.png"), ("npy", ".amodal.npy"), ("overlay", ".amodal.overlay.png"),
             ("rgba", ".amodal.rgba.png"))
    numeric = frozenset({"npy"})
    dataset = "pix2gestalt"

    # -- inputs: an image (or a video) and the visible mask, read once per video ---------------------

    def sources(self, inputs, out, recursive, mask, list_file, stdin, problems):
        from percept_cli import media

        pairs = media.collect_image_mask_pairs(inputs, mask=mask, list_file=list_file, recursive=recursive,
                                               stdin=stdin, exclude=out, problems=problems)
        return [Source(it.rel, (it.path, m), media.is_video(it.path)) for it, m in pairs]

    def load(self, src):
        from percept_cli import media

        image, visible = src.paths
        img = media.read_image(image)
        return TaskInput(img, media.read_mask(visible, like_shape=img.shape, image=image), name=str(image))

    def video_inputs(self, src, frames):
        from percept_cli import media

        video, visible = src.paths[0], None
        for index, frame in frames:
            if visible is None:
                visible = media.read_mask(src.paths[1], like_shape=frame.shape, image=video)
            yield index, TaskInput(frame, visible, name=f"{video} frame {index}")

    def check_input(self, item):
        img, got = item.image, getattr(item.extra, "shape", None)
        if not (isinstance(item.extra, np.ndarray) and got == img.shape[:2]):
            raise InputError(
                f"{item.name}: the visible mask must be {img.shape[1]}x{img.shape[0]} like its image, got "
                f"{got[1]}x{got[0]}" if got and len(got) >= 2 else f"{item.name}: a visible mask is required"
            )

    # -- the model's side ---------------------------------------------------------------------------

    def prompt(self, image, extra):
        return gray3(extra.astype(np.float32) * 2.0 - 1.0)  # {-1, +1}

    def train_pair(self, kind, scene, flipped, flow_scale):
        return self.prompt(scene("rgb"), scene("visible")), amodal_target(scene("whole_rgb"))

    def decode(self, decoded, config):
        return decoded[0].transpose(0, 2, 3, 1)  # (E, h, w, 3) image in [-1, 1]

    def finish(self, values, to_input, reduction, config):
        from percept_cli.ensemble import amodal_soft, ensemble_amodal

        threshold = float(config.get("amodal_threshold", 240.0))
        red = ensemble_amodal(values, threshold=threshold)
        image = to_input.resize(red.image)
        soft = amodal_soft(image, threshold)
        unc = None if red.uncertainty is None else to_input.resize(red.uncertainty)
        rgb = np.clip(np.round((image + 1.0) * 127.5), 0, 255).astype(np.uint8)
        mask = soft >= 0.5
        visible = to_input.extra
        if visible is not None:  # the whole object includes what is seen: amodal mask >= visible mask
            visible = np.asarray(visible, bool)
            mask |= visible
            soft = np.maximum(soft, visible.astype(np.float32))
        return AmodalResult(mask, soft.astype(np.float32), rgb, unc)

    # -- outputs ------------------------------------------------------------------------------------

    def write(self, stem, result, item, formats, overwrite):
        return write_amodal(stem, result.mask, result.soft, item.image, result.uncertainty, formats,
                            overwrite=overwrite, whole=result.image, visible=item.extra)

    def visualise(self, result, item):
        from percept_cli.writers import overlay_mask

        return overlay_mask(item.image, result.mask)

    def viz_readers(self, item):
        from percept_cli import media, writers as W

        return ((".amodal.overlay.png", media.read_image),
                (".amodal.png", lambda p: W.overlay_mask(item.image, media.read_mask(p))),
                (".amodal.npy", lambda p: W.overlay_mask(item.image, np.load(p) >= 0.5)))

    # -- evaluation ---------------------------------------------------------------------------------

    def sample(self, scene, name):
        from percept_cli.data.datasets import AmodalSample

        return AmodalSample(scene.rgb, scene.visible_mask, scene.whole_mask, scene.whole_rgb, name)

    def read_dataset(self, root):
        from percept_cli.data.datasets import read_pix2gestalt

        return read_pix2gestalt(Path(root))

    def eval_input(self, sample):
        return TaskInput(sample.rgb, sample.visible_mask, sample.name)

    def score(self, sample, pred):
        from percept_cli import metrics

        return {"iou": metrics.mask_iou(getattr(pred, "mask", pred), sample.whole_mask)}

    def baselines(self, samples):
        from percept_cli.baselines import visible_as_amodal

        return {"visible mask": lambda s: visible_as_amodal(s.visible_mask)}


TASK = Amodal()
FORMATS = TASK.formats  # --format values, in write order


def amodal_outputs(stem: str | os.PathLike[str], formats: str | Sequence[str], uncertainty: bool) -> list[Path]:
    """Paths write_amodal would write for `stem` (OUT/rel)."""
    return TASK.outputs(stem, formats, uncertainty)


def amodal_rgba(whole: np.ndarray, mask: np.ndarray, image: np.ndarray | None = None,
                visible: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 4) uint8: the object's completed RGB with alpha = the amodal mask (pix2gestalt's output).

    RGB is the model's whole-object image; where the object is visible (with `image` and `visible`),
    the input's own pixels, since what is seen needs no completing. Outside the mask alpha is 0.
    """
    mask = np.asarray(mask, bool)
    rgb = np.asarray(whole, np.uint8)
    check_map(rgb, mask.shape + (3,), "whole")
    if image is not None and visible is not None:
        check_map(image, mask.shape + (3,), "image")
        rgb = np.where(np.asarray(visible, bool)[..., None], image, rgb)
    return np.dstack([rgb, mask.astype(np.uint8) * 255]).astype(np.uint8)


def write_amodal(stem: str | os.PathLike[str], mask: np.ndarray, soft: np.ndarray, image: np.ndarray | None,
                 uncertainty: np.ndarray | None, formats: str | Sequence[str], overwrite: bool = False,
                 whole: np.ndarray | None = None, visible: np.ndarray | None = None) -> list[Path]:
    """Write the amodal mask (0/255 PNG), its probability (.npy), an overlay on `image`, the completed object
    as RGBA (needs `whole`, the (H, W, 3) whole-object image; `visible` keeps the input's seen pixels), and
    uncertainty."""
    from percept_cli import writers as W

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    check_map(soft, mask.shape, "soft")
    check_map(uncertainty, mask.shape, "uncertainty")
    plan = TASK.plan(stem, formats, uncertainty is not None)
    if "overlay" in plan:
        check_map(image, mask.shape + (3,), "image (needed for the overlay format)")
        if image is None:
            raise ValueError("image (H, W, 3) uint8 is needed for the overlay format")
    if "rgba" in plan and whole is None:
        raise ValueError("whole (H, W, 3) uint8, the whole-object image (AmodalResult.image), is needed for "
                         "the rgba format")
    return write_plan(plan, {
        "png": lambda p: W.write_png8(p, mask.astype(np.uint8) * 255),
        "npy": lambda p: W.write_npy(p, np.asarray(soft, np.float32)),
        "overlay": lambda p: W.write_png8(p, W.overlay_mask(np.asarray(image, np.uint8), mask)),
        "rgba": lambda p: W.write_png8(p, amodal_rgba(whole, mask, image, visible)),
        **uncertainty_writers(uncertainty),
    }, overwrite)
