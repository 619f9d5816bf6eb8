#!/usr/bin/env bash
# Obtain a few hundred free photographs from Debian's wallpaper/artwork packages, for
# `percept train --textures DIR` (photo textures and backgrounds of the scene generator).
#
#   scripts/get-photos.sh [OUT]        (default OUT: runs/photos)
#
# Downloads each package with `apt-get download` (no root, nothing installed), unpacks it with
# `dpkg-deb -x`, keeps the photographic JPEG/PNG/WebP files and GIMP patterns (flat-colour and vector-art
# renders, icons, screenshots and the same wallpaper at other resolutions are dropped), downsizes them to 512 px on the longest side and writes
# OUT/LICENSES.md: each package, the licence lines of its copyright file and the files taken.
# The photos stay out of git (runs/ is ignored); the licences travel with any model trained on them.
set -euo pipefail

OUT=${1:-runs/photos}
PYTHON=${PYTHON:-python3}
MAXSIDE=${MAXSIDE:-512}
# Wallpaper packages (photographs of landscapes, plants, cities...), GIMP's photographic tile patterns
# (wood, stone, fabric, food: .pat files, decoded here), OpenCV's sample photos (examples/data) and Tux
# Paint's photographic stamps (animals, fruit, plants: the opaque middle of each cut-out photo), the example
# photos of the GIMP and Fotoxx manuals (many are filter demonstrations on a few dozen source photos) and
# xplanet's satellite maps of the Earth.
PACKAGES=${PACKAGES:-"gnome-backgrounds plasma-workspace-wallpapers mate-backgrounds ukui-wallpapers
lomiri-wallpapers lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 sway-backgrounds debian-edu-artwork
gimp-data gimp-data-extras opencv-doc tuxpaint-stamps-default lxqt-themes fotoxx-common gimp-help-en
xplanet-images gimp-help-common"}  # gimp-help-common: the copyright file of gimp-help-en

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
DEBS=${DEB_CACHE:-$WORK/deb}  # DEB_CACHE=DIR keeps the downloaded packages for another run
mkdir -p "$DEBS"
DEBS=$(cd "$DEBS" && pwd)

for pkg in $PACKAGES; do
  echo "== $pkg" >&2
  mkdir -p "$DEBS/$pkg" "$WORK/x/$pkg"
  if ! ls "$DEBS/$pkg"/*.deb >/dev/null 2>&1 && ! (cd "$DEBS/$pkg" && apt-get download "$pkg" >/dev/null 2>&1); then
    echo "   not available, skipped" >&2
    continue
  fi
  dpkg-deb -x "$(ls "$DEBS/$pkg"/*.deb | head -1)" "$WORK/x/$pkg"
done

"$PYTHON" - "$WORK" "$DEBS" "$OUT" "$MAXSIDE" <<'PY'
"""Keep photographic images, downsize, write LICENSES.md."""
import re
import sys
from pathlib import Path

import cv2
import numpy as np

work, debs, out, maxside = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
SKIP = re.compile(r"(icons?|themes?|/ui/|/html/|screenshot|logo|thumbnail|splash|lena|chessboard|/left\d|/right\d"
                  r"|calib|/dnn/|digits|letter|text|gradient|mask|/aloe|/pic\d)", re.I)
ONLY = {"opencv-doc": re.compile(r"examples/data/"), "gimp-data": re.compile(r"\.pat$"),
        "gimp-data-extras": re.compile(r"\.pat$"),
        "gimp-help-en": re.compile(r"images/(filters/examples|tutorials)/"),
        "fotoxx-common": re.compile(r"/(images|patterns)/"), "lxqt-themes": re.compile(r"/wallpapers/"),
        "xplanet-images": re.compile(r"/(earth|night)\.jpg$"),
        "tuxpaint-stamps-default": re.compile(r"^(?!.*(cartoon|alphabet|symbols|/town/|seasonal|space|sports)).*\.png$")}


def opaque_middle(img: np.ndarray) -> np.ndarray | None:
    """The largest centred rectangle of a cut-out (RGBA) photo that is opaque, as BGR; None if too small."""
    alpha = img[..., 3] > 250
    ys, xs = np.nonzero(alpha)
    if len(ys) < 64 * 64:
        return None
    cy, cx = int(np.median(ys)), int(np.median(xs))
    hh, hw = (ys.max() - ys.min()) // 2, (xs.max() - xs.min()) // 2
    for f in np.linspace(0.9, 0.2, 15):
        y0, y1, x0, x1 = max(cy - int(f * hh), 0), cy + int(f * hh), max(cx - int(f * hw), 0), cx + int(f * hw)
        if min(y1 - y0, x1 - x0) >= 64 and alpha[y0:y1, x0:x1].mean() > 0.995:
            return np.ascontiguousarray(img[y0:y1, x0:x1, :3])
    return None


def read_pat(path: Path) -> np.ndarray | None:
    """A GIMP pattern (.pat): big-endian header (size, version, width, height, bytes), 'GPAT', name, pixels."""
    raw = path.read_bytes()
    size, _, w, h, bpp = np.frombuffer(raw[:20], ">u4")
    if raw[20:24] != b"GPAT" or bpp not in (1, 2, 3, 4):
        return None
    px = np.frombuffer(raw[size:size + w * h * bpp], np.uint8)
    if px.size != w * h * bpp:
        return None
    px = px.reshape(h, w, bpp)
    rgb = np.repeat(px[..., :1], 3, axis=-1) if bpp <= 2 else px[..., :3]
    return np.ascontiguousarray(rgb[..., ::-1])  # BGR, as cv2 reads


def photographic(img: np.ndarray) -> bool:
    """Photos have fine texture almost everywhere; gradients, flat art and vector renders do not."""
    if img.shape[1] > 256:
        img = cv2.resize(img, (256, max(1, 256 * img.shape[0] // img.shape[1])), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
    lap = np.abs(cv2.Laplacian(grey, cv2.CV_32F))
    textured = (lap > 2.0).mean()  # fraction of pixels with local detail
    packed = img.reshape(-1, 3).astype(np.int32) @ np.array([1, 256, 65536])
    mode = np.bincount(np.unique(packed, return_inverse=True)[1]).max() / len(packed)  # screenshots: one UI grey
    colours = len(np.unique((img // 8).reshape(-1, 3), axis=0))  # distinct 15-bit colours
    return textured > 0.3 and mode < 0.08 and colours > 0.01 * grey.size + 150


def ahash(img: np.ndarray) -> np.ndarray:
    """256-bit average hash: the same photo again (resized, recompressed, lightly filtered) hashes alike."""
    g = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32)
    return (g > g.mean()).ravel()


lines = ["# Photographs for the scene generator's textures and backgrounds", "",
         "Obtained by `scripts/get-photos.sh` from Debian packages (`apt-get download`), downsized to",
         f"{maxside} px on the longest side. Licences as stated in each package's copyright file.", ""]
total, seen, summary = 0, [], []
for pkg_dir in sorted((work / "x").iterdir()):
    pkg = pkg_dir.name
    found = list((debs / pkg).glob("*.deb"))
    if not found:
        continue
    version = found[0].name.split("_")[1].replace("%3a", ":") if "_" in found[0].name else "?"
    files = sorted(p for p in pkg_dir.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".pat"))
    files = [p for p in files if not SKIP.search(str(p.relative_to(pkg_dir))) and
             (pkg not in ONLY or ONLY[pkg].search(str(p.relative_to(pkg_dir))))]
    # One wallpaper shipped at many resolutions (…/images/1920x1080.jpg): keep its largest file only.
    best: dict = {}
    for p in files:
        key = p.parent if re.fullmatch(r"\d+x\d+", p.stem) else p
        area = np.prod([int(v) for v in p.stem.split("x")]) if key is p.parent else 0
        if key not in best or area > best[key][0]:
            best[key] = (area, p)
    taken = []
    for _, p in sorted(best.values(), key=lambda v: str(v[1])):
        img = read_pat(p) if p.suffix.lower() == ".pat" else cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        small_ok = 128
        if img is not None and img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        if img is not None and img.dtype != np.uint8:
            img = (img // 257).astype(np.uint8)
        if img is not None and img.shape[2] == 4:  # a cut-out photo: its opaque middle
            img = img[..., :3] if (img[..., 3] > 250).all() else opaque_middle(img)
            small_ok = 64
        if p.suffix.lower() == ".pat":
            small_ok = 64
        if img is None or min(img.shape[:2]) < small_ok or not photographic(img):
            continue
        s = maxside / max(img.shape[:2])
        if s < 1:
            img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        h = ahash(img)
        if any(int((h != k).sum()) <= 12 for k in seen):  # the same picture again
            continue
        seen.append(h)
        rel = p.relative_to(pkg_dir)
        name = f"{pkg}--{re.sub(r'[^A-Za-z0-9._-]+', '_', str(rel.with_suffix('')))}"
        if p.suffix.lower() in (".png", ".pat") and max(img.shape[:2]) <= 256:
            name += ".png"  # small tiles stay lossless
            cv2.imwrite(str(out / name), img)
        else:
            name += ".jpg"
            cv2.imwrite(str(out / name), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        taken.append((name, str(rel)))
    if not taken:
        continue
    total += len(taken)
    licence = []
    copyrights = sorted(pkg_dir.glob("usr/share/doc/*/copyright"))
    for doc in pkg_dir.glob("usr/share/doc/*"):  # a doc folder that links to another package's
        if doc.is_symlink() and not copyrights:
            copyrights = sorted((work / "x").glob(f"*/usr/share/doc/{Path(str(doc.readlink())).name}/copyright"))
            licence.append(f"(copyright file of {Path(str(doc.readlink())).name}, which {pkg} links to)")
    for cr in copyrights:
        for line in cr.read_text(errors="replace").splitlines():
            if re.match(r"\s*(License|Licence)\s*:", line) or re.search(
                    r"\b(GPL|LGPL|CC-BY|CC BY|Creative Commons|CC0|public domain|BSD|Apache|MIT)\b", line, re.I):
                licence.append(line.strip())
    licence = list(dict.fromkeys(licence))  # unique, in order
    names = dict.fromkeys(l.split(":", 1)[1].strip() for l in licence if re.match(r"Licen[sc]e\s*:", l))
    summary.append(f"{pkg}: {len(taken)} ({', '.join(n for n in names if n)[:200]})")
    lines += [f"## {pkg} {version}", "", f"{len(taken)} photos. Licence lines of usr/share/doc/{pkg}/copyright:", ""]
    lines += [f"    {l}" for l in licence[:80]] or ["    (no copyright file found)"]
    lines += ["", "Files (taken as <- source path in the package):", ""]
    lines += [f"- `{n}` <- `{r}`" for n, r in taken]
    lines.append("")
(out / "LICENSES.md").write_text("\n".join(lines) + "\n")
print("\n".join(summary), file=sys.stderr)
print(f"{total} photos in {out}", file=sys.stderr)
PY
