"""Regression tests from the bad-input sweep (issue 12, section 2): each would fail before its fix.

Commands run in-process through main() (tests.helpers.percept) on a tiny seeded model folder at
resolution 32 with 2 steps; the size checks run before any model loads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from percept_cli import media, run
from percept_cli.errors import InputError, UsageError
from tests.helpers import ROOT, fast, files, image, no_model_load, percept, records, tiny_model_folder


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model_folder(tmp_path_factory.mktemp("bad") / "tiny")


@pytest.fixture(scope="module")
def model_e2(tmp_path_factory) -> Path:
    """A model whose checkpoint default is an ensemble of 2 (like the builtin tiny's 4)."""
    return tiny_model_folder(tmp_path_factory.mktemp("bad") / "tiny-e2", ensemble=2)


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def mp4(path: Path, frames: int, hw=(24, 32), faststart: bool = False) -> Path:
    import imageio.v2 as imageio

    rng = np.random.default_rng(1)
    w = imageio.get_writer(path, format="FFMPEG", fps=10, codec="libx264", pixelformat="yuv420p",
                           macro_block_size=1, ffmpeg_log_level="error",
                           output_params=["-movflags", "+faststart"] if faststart else None)
    for _ in range(frames):
        w.append_data(rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
    w.close()
    return path


# ----------------------------------------------------------------------------------------- 1. resume + default ensemble


@pytest.mark.parametrize("task", ["depth", "flow"])
def test_rerun_writes_missing_uncertainty_when_the_ensemble_is_the_models_default(model_e2, tmp_path, task,
                                                                                 monkeypatch):
    args = [tmp_path / "a.png", tmp_path / "b.png"] if task == "flow" else [tmp_path / "a.png"]
    image(tmp_path / "a.png"), image(tmp_path / "b.png", seed=1)
    out = tmp_path / "out"
    code, stdout, stderr = percept(task, *args, "-o", out, "--json", *fast(model_e2))  # no --ensemble: 2
    assert code == 0, stderr
    assert records(stdout)[0]["settings"]["ensemble"] == 2
    unc = sorted(p.name for p in out.iterdir() if ".uncertainty." in p.name)
    assert unc == [f"a.{task}.uncertainty.npy", f"a.{task}.uncertainty.png"]
    # everything there: skipped without loading the model
    with monkeypatch.context() as m:
        no_model_load(m)
        code, stdout, _ = percept(task, *args, "-o", out, "--json", *fast(model_e2))
    assert code == 0 and [r["status"] for r in records(stdout)] == ["skipped"]
    assert sorted(records(stdout)[0]["outputs"]) == sorted(str(p) for p in out.iterdir())
    # the uncertainty maps gone: the input runs again (it was "nothing to do")
    for name in unc:
        (out / name).unlink()
    code, stdout, stderr = percept(task, *args, "-o", out, "--json", *fast(model_e2))
    assert code == 0 and [r["status"] for r in records(stdout)] == ["ok"], stderr
    assert all((out / name).is_file() for name in unc)


def test_default_ensemble_is_read_without_loading_the_model(model, model_e2, monkeypatch):
    no_model_load(monkeypatch)
    assert run.default_ensemble("depth", str(model_e2)) == 2
    assert run.default_ensemble("depth", str(model)) == 1
    assert run.default_ensemble("flow", "tiny") == 4  # the builtin model's percept.json
    assert run.default_ensemble("depth", "no-such-model") is None


# ----------------------------------------------------------------------------------------- 2. animated GIFs


def gif(path: Path, values=(0, 200), duration=100) -> Path:
    frames = [Image.fromarray(np.full((24, 32, 3), v, np.uint8)) for v in values]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration, loop=0)
    return path


def test_gif_frames_are_its_real_frames_and_durations_give_the_rate(tmp_path):
    anim = gif(tmp_path / "anim.gif")  # 2 frames of 100 ms: ffmpeg resampled them to 20
    info = media.video_info(anim)
    assert (info.frames, info.fps, info.width, info.height) == (2, 10.0, 32, 24)
    got = list(media.iter_video_frames(anim))
    assert [i for i, _ in got] == [0, 1]
    assert [int(f[0, 0, 0]) for _, f in got] == [0, 200] and got[0][1].shape == (24, 32, 3)
    assert media.video_info(gif(tmp_path / "slow.gif", duration=[100, 300])).fps == 5.0  # 2 frames in 0.4 s


def test_gif_depth_writes_one_output_per_frame_and_a_two_frame_mp4(model, tmp_path):
    import imageio.v3 as iio

    anim = gif(tmp_path / "anim.gif")
    out = tmp_path / "out"
    code, stdout, stderr = percept("depth", anim, "-o", out, "--format", "npy", "--json", *fast(model))
    assert code == 0, stderr
    assert files(out) == ["anim.depth.mp4", "anim/frame_000000.depth.npy", "anim/frame_000001.depth.npy"]
    assert records(stdout)[-1]["frames"] == 2
    assert iio.imread(out / "anim.depth.mp4").shape[0] == 2
    assert iio.immeta(out / "anim.depth.mp4")["fps"] == 10.0


# ----------------------------------------------------------------------------------------- 4. size limits


def test_resolution_above_the_limit_is_a_usage_error_before_the_model_loads(tmp_path, monkeypatch):
    no_model_load(monkeypatch)
    img = image(tmp_path / "a.png")
    code, stdout, stderr = percept("depth", img, "-o", tmp_path / "out", "--resolution", "100000")
    assert code == 2 and stdout == ""
    (line,) = errors(stderr)
    assert "--resolution 100000 is above the limit of 4096 px" in line and "PERCEPT_MAX_RESOLUTION" in line
    monkeypatch.setenv("PERCEPT_MAX_RESOLUTION", "lots")
    code, _, stderr = percept("depth", img, "-o", tmp_path / "out", "--resolution", "64")
    assert code == 2 and "PERCEPT_MAX_RESOLUTION='lots' is not a positive whole number" in stderr


def test_an_image_over_the_pixel_limit_fails_alone(model, tmp_path, monkeypatch):
    small, big = image(tmp_path / "small.png", hw=(8, 8)), image(tmp_path / "big.png", hw=(20, 28))
    monkeypatch.setenv("PERCEPT_MAX_PIXELS", "100")
    out = tmp_path / "out"
    code, stdout, stderr = percept("depth", small, big, "-o", out, "--json", "--format", "npy", *fast(model))
    assert code == 1
    assert [r["status"] for r in records(stdout)] == ["ok", "failed"]
    assert errors(stderr)[0] == (f"error: image '{big}' is too large to process (28x20, 0.0 MP; the limit is 0.0001 MP); "
                                 "downscale it, or raise the limit with PERCEPT_MAX_PIXELS=560")
    assert files(out) == ["small.depth.npy"]
    monkeypatch.setenv("PERCEPT_MAX_PIXELS", "-5")
    code, _, stderr = percept("depth", small, "-o", out, *fast(model))
    assert code == 2 and "PERCEPT_MAX_PIXELS='-5' is not a positive whole number of pixels" in stderr


def test_huge_images_are_refused_from_their_header_without_decoding(tmp_path):
    """A 20000x20000 PNG is 49 KB on disk (400 MP, 1.2 GB decoded); 10000x10000 is over 64 MP too."""
    Image.new("1", (20000, 20000)).save(tmp_path / "huge.png")
    Image.new("1", (10000, 10000)).save(tmp_path / "big.png")
    code = (
        "from percept_cli import media\n"
        "for name in ('huge.png', 'big.png'):\n"
        "    try:\n"
        "        media.read_image(name)\n"
        "    except media.InputError as e:\n"
        "        print(e)\n"
        "try:\n"  # peak resident memory of this process alone (ru_maxrss would include pytest's, from the fork)
        "    print(next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM')) // 1024)\n"
        "except OSError:\n"
        "    print(-1)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    huge, big, peak_mb = res.stdout.splitlines()
    assert huge == ("image 'huge.png' is too large to process (400.0 MP; the limit is 64 MP); downscale it, "
                    "or raise the limit with PERCEPT_MAX_PIXELS=400000000"), res.stderr
    assert "'big.png' is too large to process (10000x10000, 100.0 MP" in big
    assert int(peak_mb) < 250  # MB (-1 without /proc); decoding either would take 300 MB or more
    assert res.stderr == ""  # Pillow's DecompressionBombWarning is not shown


def test_uint16_images_convert_band_by_band(tmp_path):
    arr = np.random.default_rng(0).integers(0, 65536, (2500, 7, 3), dtype=np.uint16)  # more rows than one band
    cv2.imwrite(str(tmp_path / "deep.png"), arr[..., ::-1])
    want = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    np.testing.assert_array_equal(media.read_image(tmp_path / "deep.png"), want)


# ----------------------------------------------------------------------------------------- 5. truncated videos


def truncated(tmp_path: Path, frames: int = 20) -> Path:
    whole = mp4(tmp_path / "whole.mp4", frames, faststart=True)  # its index first: a cut file still opens
    cut = tmp_path / "cut.mp4"
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    return cut


def test_a_truncated_video_says_how_many_frames_decoded(tmp_path):
    cut = truncated(tmp_path)
    seen = []
    with pytest.raises(media.VideoShortError, match=r"video '.*cut.mp4': decoded (\d+) of 20 frames declared") as e:
        for index, _ in media.iter_video_frames(cut):
            seen.append(index)
    assert 0 < e.value.decoded == len(seen) < 20 and e.value.declared == 20
    assert sum(1 for _ in media.iter_video_frames(tmp_path / "whole.mp4")) == 20  # an intact file: no word
    assert [i for i, _ in media.iter_video_frames(cut, max_frames=3)] == [0, 1, 2]  # not read to the end: no word


def test_a_truncated_video_writes_its_frames_warns_and_exits_1(model, tmp_path):
    cut = truncated(tmp_path)
    img = image(tmp_path / "a.png")
    out = tmp_path / "out"
    code, stdout, stderr = percept("depth", cut, img, "-o", out, "--json", "--format", "npy", *fast(model))
    assert code == 1
    warning = [line for line in stderr.splitlines() if line.startswith("warning: video")]
    assert len(warning) == 1 and f"video '{cut}': decoded" in warning[0] and "of 20 frames declared" in warning[0]
    decoded = int(warning[0].split("decoded ")[1].split(" ")[0])
    recs = records(stdout)
    assert [r["status"] for r in recs] == ["ok"] * decoded + ["failed", "ok"]
    assert recs[decoded]["frames"] == decoded and recs[decoded]["outputs"] == [str(out / "cut.depth.mp4")]
    assert files(out) == ["a.depth.npy", "cut.depth.mp4"] + [f"cut/frame_{i:06d}.depth.npy" for i in range(decoded)]
    assert errors(stderr)[-1].startswith(f"error: 1 of {decoded + 2} inputs failed: {cut};")
    # a re-run says so again (and exits 1), predicting nothing
    code, stdout, stderr = percept("depth", cut, img, "-o", out, "--json", "--format", "npy", *fast(model))
    assert code == 1 and "of 20 frames declared" in stderr
    assert [r["status"] for r in records(stdout)] == ["skipped"] * decoded + ["failed", "skipped"]


# ----------------------------------------------------------------------------------------- 7. --json as files are written


def test_json_line_of_each_input_is_printed_when_its_files_are_written(model, tmp_path, monkeypatch):
    from percept_cli.console import Console
    from percept_cli.pipeline import Predictor

    events = []
    real_iter, real_record = Predictor.predict_iter, Console.record

    def predict_iter(self, task, inputs, *a, **k):
        for i, result in real_iter(self, task, inputs, *a, **k):
            events.append(("predicted", inputs[i].name))
            yield i, result

    def record(obj):
        events.append(("printed", obj["inputs"][0]))
        real_record(obj)

    monkeypatch.setattr(Predictor, "predict_iter", predict_iter)
    monkeypatch.setattr(Console, "record", staticmethod(record))
    names = [str(image(tmp_path / f"in/{i}.png", seed=i)) for i in range(3)]
    code, stdout, stderr = percept("depth", tmp_path / "in", "-o", tmp_path / "out", "--json", "--format", "npy",
                                   "--batch-size", "1", *fast(model))
    assert code == 0, stderr
    assert len(names) < run.CHUNK  # one chunk: before, every line came after the last prediction
    assert events == [(kind, n) for n in names for kind in ("predicted", "printed")]
    assert [r["inputs"][0] for r in records(stdout)] == names


# ----------------------------------------------------------------------------------------- 10. batches go on


def test_a_missing_argument_fails_alone(model, tmp_path):
    a, c = image(tmp_path / "a.png"), image(tmp_path / "c.png", seed=2)
    gone = tmp_path / "gone.png"
    out = tmp_path / "out"
    code, stdout, stderr = percept("depth", a, gone, c, "-o", out, "--json", "--format", "npy", *fast(model))
    assert code == 1
    assert errors(stderr)[0] == f"error: input '{gone}' (argument) does not exist; check the path"
    assert errors(stderr)[-1].startswith(f"error: 1 of 3 inputs failed: {gone};")
    assert {r["inputs"][0]: r["status"] for r in records(stdout)} == {str(gone): "failed", str(a): "ok", str(c): "ok"}
    assert files(out) == ["a.depth.npy", "c.depth.npy"]


def test_stdin_and_list_lines_that_are_missing_fail_alone(model, tmp_path):
    for i in range(3):
        image(tmp_path / f"f{i}.png", seed=i)
    listing = tmp_path / "pairs.txt"
    listing.write_text("f0.png f1.png\nf1.png nope.png\nf1.png f2.png\nonly_one.png\n")
    code, stdout, stderr = percept("flow", "--list", listing, "-o", tmp_path / "o1", "--format", "flo", "--json",
                                   *fast(model))
    assert code == 1
    assert [line.split(":")[1] for line in errors(stderr)[:2]] == [f" list '{listing}' line 2", f" list '{listing}' line 4"]
    assert files(tmp_path / "o1") == ["f0.flow.flo", "f1.flow.flo"]
    code, stdout, stderr = percept("depth", "-", "-o", tmp_path / "o2", "--format", "npy", *fast(model),
                                   input=f"{tmp_path / 'f0.png'}\n{tmp_path / 'gone.png'}\n")
    assert code == 1 and "'" + str(tmp_path / "gone.png") + "' (stdin line 2) does not exist" in stderr
    assert files(tmp_path / "o2") == ["f0.depth.npy"]


def test_a_mask_folder_without_one_mask_fails_that_image_alone(model, tmp_path):
    image(tmp_path / "in" / "a.png", hw=(24, 32)), image(tmp_path / "in" / "b.png", hw=(24, 32), seed=1)
    m = np.zeros((24, 32), np.uint8)
    m[4:12, 5:20] = 255
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "masks" / "b.png"), m)
    out = tmp_path / "out"
    code, _, stderr = percept("amodal", tmp_path / "in", "--mask", tmp_path / "masks", "-o", out, "--format", "png",
                              *fast(model))
    assert code == 1 and f"no mask for image '{tmp_path / 'in' / 'a.png'}'" in errors(stderr)[0]
    assert files(out) == ["b.amodal.png"]


def test_all_inputs_missing_fails_without_a_model_or_an_output_folder(tmp_path, monkeypatch):
    no_model_load(monkeypatch)
    code, _, stderr = percept("depth", tmp_path / "x.png", tmp_path / "y.png", "-o", tmp_path / "out")
    assert code == 1 and len(errors(stderr)) == 3 and "2 of 2 inputs failed" in errors(stderr)[-1]
    assert not (tmp_path / "out").exists()


def test_flow_with_one_frame_is_a_usage_error(model, tmp_path, monkeypatch):
    no_model_load(monkeypatch)
    a = image(tmp_path / "a.png")
    code, _, stderr = percept("flow", a, "-o", tmp_path / "out", *fast(model))
    assert code == 2 and f"flow needs two images but only '{a}' was given" in stderr
    with pytest.raises(UsageError):
        media.collect_pairs([str(a)])


# ----------------------------------------------------------------------------------------- 11. own outputs never inputs


def test_outputs_inside_the_input_folder_are_never_inputs(model, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    image(folder / "scene.png"), image(folder / "sub" / "b.jpg", seed=1)
    # -o equal to the input folder ("no inputs left" before)
    code, stdout, stderr = percept("depth", folder, "-r", "-o", folder, "--json", "--format", "npy,color",
                                   *fast(model))
    assert code == 0, stderr
    assert [r["status"] for r in records(stdout)] == ["ok", "ok"]
    # again, and as '.', with the outputs beside the inputs: nothing new is an input
    monkeypatch.chdir(folder)
    with monkeypatch.context() as m:
        no_model_load(m)
        for args in ([folder, "-o", folder], [".", "-o", "."], ["*", "-o", "."]):
            code, stdout, stderr = percept("depth", *args, "-r", "--json", "--format", "npy,color", *fast(model))
            assert code == 0, (args, stderr)
            assert [r["status"] for r in records(stdout)] == ["skipped", "skipped"], args
    assert files(folder) == ["scene.depth.color.png", "scene.depth.npy", "scene.png",
                             "sub/b.depth.color.png", "sub/b.depth.npy", "sub/b.jpg"]
    # an output folder above the input folder excludes nothing
    code, stdout, _ = percept("depth", folder, "-o", tmp_path, "--json", "--format", "npy", *fast(model))
    assert code == 0 and [r["inputs"] for r in records(stdout)] == [[str(folder / "scene.png")]]
    # named explicitly: refused with a message, the batch goes on
    code, stdout, stderr = percept("depth", folder / "scene.depth.color.png", folder / "scene.png", "-o",
                                   tmp_path / "o2", "--json", "--format", "npy", *fast(model))
    assert code == 1 and [r["status"] for r in records(stdout)] == ["failed", "ok"]
    assert (f"input '{folder / 'scene.depth.color.png'}' (argument) is named like percept's own output (*.depth.*)"
            in errors(stderr)[0])


def test_is_own_output():
    for name in ("a.depth.npy", "a.depth.color.png", "clip.flow.mp4", "x.y.amodal.overlay.png",
                 "d/f.flow.uncertainty.png"):
        assert media.is_own_output(name), name
    for name in ("depth.png", "a.png", "my.depth", ".a.depth.tmp-1.npy", "flowers.png", "a.depths.png"):
        assert not media.is_own_output(name), name


# ----------------------------------------------------------------------------------------- 12. a folder where a file goes


def test_a_folder_named_like_an_output_is_an_error_and_the_rest_go_on(model, tmp_path):
    a, b = image(tmp_path / "a.png"), image(tmp_path / "b.png", seed=1)
    out = tmp_path / "out"
    (out / "a.depth.npy").mkdir(parents=True)
    code, stdout, stderr = percept("depth", a, b, "-o", out, "--json", "--format", "npy", *fast(model))
    assert code == 1
    assert [r["status"] for r in records(stdout)] == ["failed", "ok"]
    assert errors(stderr)[0] == (f"error: output '{out / 'a.depth.npy'}' is a folder, so the file cannot be written "
                                 "there; remove or rename it, or choose another output folder with -o")
    assert files(out) == ["b.depth.npy"]
    # so is a folder where a video's .mp4 goes
    clip = mp4(tmp_path / "clip.mp4", 2)
    (out / "clip.depth.mp4").mkdir()
    code, stdout, stderr = percept("depth", clip, "-o", out, "--json", "--format", "npy", *fast(model))
    assert code == 1 and f"output '{out / 'clip.depth.mp4'}' is a folder" in errors(stderr)[0]
