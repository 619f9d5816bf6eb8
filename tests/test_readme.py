"""The README's claims that a test can check: its `percept ...` commands run, its Python runs, its links exist.

Every fenced ```bash block line that starts with `percept ` is run in a temporary folder holding a copy of
examples/ and the other inputs the README names (photo.jpg, clip.mp4, frames/, list files, ...), through
`percept_cli.cli.main` in this process (no torch import per command). Predictions are forced onto the
embedded `tiny` with small settings (see `_small`), and nothing reaches the network (HF_HUB_OFFLINE=1).
The commands that cannot run here are in SKIP, each with its reason.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import percept

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

PREDICT = ("depth", "flow", "amodal")
# substring of the command -> why it is not run here
SKIP = {
    "--model generalist": "downloads ~11 GB and wants a GPU (its loading is tested on fixtures: test_official.py)",
    "models pull generalist": "network (pull --pin is tested against a stand-in Hub: test_cli_models.py)",
    "models lock": "maintainers' command that rewrites weights.lock from the Hub (test_cli_models.py)",
    "percept train": "training runs for minutes to hours (test_train.py, test_latent_train.py run it small)",
    "percept scaling": "the study trains a model family for ~40 minutes (test_scaling.py runs a small one)",
}
# substring -> why it runs only with --runslow / PERCEPT_SLOW=1 (as in CI): the rest together take ~30 s on 2 cores
SLOW = {
    "percept eval": "renders held-out scenes and runs OpenCV's DIS beside the model (~12 s even at 2 scenes, 1 step)",
}
EXIT = {}  # command -> documented exit code other than 0 (none at present)


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def readme_commands() -> list[str]:
    """`percept ...` lines of the README's bash blocks (with a stdin producer: `X | percept ...`), comments cut."""
    out = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("percept ") or re.match(r"^[^#]*\|\s*percept ", line):
                out.append(line)
    return out


def _small(args: list[str], out: str) -> list[str]:
    """Force tiny and small settings onto a prediction or evaluation (few steps and members, small scenes), and
    give a prediction without -o its own output folder (a shared one would skip inputs already done)."""
    args = list(args)
    cap = {"--steps": 2, "--ensemble": 3, "--count": 2, "--synthetic": 2, "--size": 64, "--frames": 3}
    for i, a in enumerate(args[:-1]):
        if a in cap:
            args[i + 1] = str(min(int(args[i + 1]), cap[a]))
    if args[0] in PREDICT + ("eval",) and "--model" not in args:
        args += ["--model", "tiny"]  # a model folder the README made (upcycle, export) stays
    if args[0] in PREDICT:
        args += [] if "--steps" in args else ["--steps", "1"]
        args += [] if "-o" in args or "--output" in args else ["-o", out]
    if args[0] == "eval":
        args += [f for flag, value in (("--count", "2"), ("--steps", "1"), ("--ensemble", "1"), ("--size", "64"))
                 if flag not in args for f in (flag, value)]
    return args


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """examples/ and every other input the README's commands name, as a user would have them."""
    import imageio.v2 as imageio

    work = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "examples", work / "examples")
    (work / "percept_cli").mkdir()
    shutil.copytree(ROOT / "percept_cli" / "assets" / "tiny", work / "percept_cli" / "assets" / "tiny")
    scene = cv2.imread(str(ROOT / "examples" / "scene.png"))
    small = cv2.resize(scene, (96, 64))
    cv2.imwrite(str(work / "photo.jpg"), small)
    for name in ("images", "frames"):
        (work / name).mkdir()
    cv2.imwrite(str(work / "images" / "scene.png"), small)
    (work / "masks").mkdir()
    mask = cv2.imread(str(ROOT / "examples" / "scene_visible_mask.png"))
    cv2.imwrite(str(work / "masks" / "scene.png"), cv2.resize(mask, (96, 64), interpolation=cv2.INTER_NEAREST))
    nxt = cv2.resize(cv2.imread(str(ROOT / "examples" / "scene_next.png")), (96, 64))
    for i, img in enumerate((small, nxt, small)):
        cv2.imwrite(str(work / "frames" / f"f{i}.png"), img)
    (work / "pairs.txt").write_text("examples/scene.png examples/scene_next.png\n")
    (work / "amodal-pairs.txt").write_text("examples/scene.png examples/scene_visible_mask.png\n")
    (work / "known.txt").write_text("# x y metres\n128 240 1.5\n60 200 3.0\n200 40 6.0\n30 30 8.0\n")
    writer = imageio.get_writer(work / "clip.mp4", format="FFMPEG", fps=5, codec="libx264", pixelformat="yuv420p",
                                macro_block_size=1, ffmpeg_log_level="error")
    for img in (small, nxt, small, nxt):
        writer.append_data(np.ascontiguousarray(img[..., ::-1]))
    writer.close()
    return work


def _run(line: str, cwd: Path) -> tuple[int, str, str]:
    stdin = None
    if "|" in line:  # `PRODUCER | percept ...`: the producer runs in a shell, its output is percept's stdin
        producer, line = (s.strip() for s in line.split("|", 1))
        stdin = subprocess.run(producer, shell=True, cwd=cwd, capture_output=True, text=True, check=True).stdout
    tokens = shlex.split(line)
    target = None
    if ">" in tokens:
        tokens, target = tokens[: tokens.index(">")], tokens[tokens.index(">") + 1]
    before = os.getcwd()
    os.chdir(cwd)
    try:  # a quoted glob reaches percept as the user's shell passes it, unexpanded: percept expands it
        code, out, err = percept(*_small(tokens[1:], f"out-{abs(hash(line))}"), input=stdin)
    finally:
        os.chdir(before)
    if target:
        (cwd / target).write_text(out)
    return code, out, err


COMMANDS = readme_commands()


def _skip_reason(line: str) -> str | None:
    return next((why for key, why in SKIP.items() if key in line), None)


def test_the_readme_has_commands_for_every_subcommand():
    """Every subcommand of `percept --help` appears in the README with an example."""
    text = "\n".join(COMMANDS)
    for sub in ("depth", "flow", "amodal", "train", "upcycle", "export", "scaling", "eval",
                "models list", "models pull", "models verify", "models info", "models lock"):
        assert f"percept {sub}" in text, sub


@pytest.mark.parametrize("line", [pytest.param(c, marks=[pytest.mark.slow] if any(k in c for k in SLOW) else [])
                                  for c in COMMANDS])
def test_readme_command_runs(line, workdir, monkeypatch):
    if why := _skip_reason(line):
        pytest.skip(why)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("PERCEPT_MODEL", raising=False)
    code, out, err = _run(line, workdir)
    assert code == EXIT.get(line, 0), f"{line}\n{err[-3000:]}"


def test_readme_first_command_is_the_install_and_tiny_depth():
    first = _blocks("bash")[0]
    assert "pip install torch==2.13.0 -e . && percept depth examples/scene.png" in first
    assert 'pip install -q torch==2.13.0 -e ".[test]" && python -m pytest' in first


def test_readme_python_runs(monkeypatch):
    """The Python blocks run as shown (from the repository root, where examples/ is)."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for block in _blocks("python"):
        code = block.replace("steps=20", "steps=2").replace("steps=10", "steps=1")
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})


def test_readme_links_and_pictures_exist():
    text = README.read_text()
    links = re.findall(r"\]\(((?:docs|benchmarks|examples|configs)/[^)#\s]+)", text)
    assert len(links) >= 10
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing
    for picture in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (ROOT / picture).stat().st_size < 300_000, picture
    assert len(text.splitlines()) <= 420
