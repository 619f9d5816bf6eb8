#!/usr/bin/env bash
# Obtain a few hundred free photographs from Debian's wallpaper/artwork packages, for
# `percept train --textures DIR` (photo textures and backgrounds of the scene generator).
#
#   scripts/get-photos.sh [OUT]        (default OUT: runs/photos)
#
# Downloads each package with `apt-get download` (no root, nothing installed), unpacks it with
# `dpkg-deb -x`, keeps the photographic JPEG/PNG files (flat-colour and vector-art renders are
# dropped by a texture test), downsizes them to 512 px on the longest side and writes
# OUT/LICENSES.md: each package, the licence lines of its copyright file and the files taken.
# The photos stay out of git (runs/ is ignored); the licences travel with any model trained on them.
set -euo pipefail

OUT=${1:-runs/photos}
PYTHON=${PYTHON:-python3}
MAXSIDE=${MAXSIDE:-512}
PACKAGES=${PACKAGES:-"gnome-backgrounds plasma-workspace-wallpapers mate-backgrounds ukui-wallpapers
lomiri-wallpapers lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 sway-backgrounds debian-edu-artwork"}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

for pkg in $PACKAGES; do
  echo "== $pkg" >&2
  mkdir -p "$WORK/deb/$pkg" "$WORK/x/$pkg"
  if ! (cd "$WORK/deb/$pkg" && apt-get download "$pkg" >/dev/null 2>&1); then
    echo "   not available, skipped" >&2
    continue
  fi
  dpkg-deb -x "$WORK"/deb/"$pkg"/*.deb "$WORK/x/$pkg"
done

"$PYTHON" - "$WORK" "$OUT" "$MAXSIDE" <<'PY'
"""Keep photographic images, downsize, write LICENSES.md."""
import re
import sys
from pathlib import Path

import cv2
import numpy as np

work, out, maxside = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])


def photographic(img: np.ndarray) -> bool:
    """Photos have fine texture almost everywhere; gradients, flat art and vector renders do not."""
    small = cv2.resize(img, (256, 256 * img.shape[0] // img.shape[1] or 1), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float32)
    lap = np.abs(cv2.Laplacian(grey, cv2.CV_32F))
    textured = (lap > 2.0).mean()  # fraction of pixels with local detail
    colours = len(np.unique((small // 8).reshape(-1, 3), axis=0))  # distinct 15-bit colours
    return textured > 0.35 and colours > 600


lines = ["# Photographs for the scene generator's textures and backgrounds", "",
         "Obtained by `scripts/get-photos.sh` from Debian packages (`apt-get download`), downsized to",
         f"{maxside} px on the longest side. Licences as stated in each package's copyright file.", ""]
total = 0
seen_hashes = set()
for pkg_dir in sorted((work / "x").iterdir()):
    pkg = pkg_dir.name
    debs = list((work / "deb" / pkg).glob("*.deb"))
    if not debs:
        continue
    version = debs[0].name.split("_")[1] if "_" in debs[0].name else "?"
    files = sorted(p for p in pkg_dir.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.is_file())
    taken = []
    for p in files:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None or min(img.shape[:2]) < 200 or not photographic(img):
            continue
        s = maxside / max(img.shape[:2])
        if s < 1:
            img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        key = cv2.resize(img, (8, 8), interpolation=cv2.INTER_AREA).tobytes()  # the same picture at other sizes
        if key in seen_hashes:
            continue
        seen_hashes.add(key)
        rel = p.relative_to(pkg_dir)
        name = f"{pkg}--{re.sub(r'[^A-Za-z0-9._-]+', '_', str(rel.with_suffix('')))}.jpg"
        cv2.imwrite(str(out / name), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        taken.append((name, str(rel)))
    if not taken:
        continue
    total += len(taken)
    licence = []
    for cr in pkg_dir.glob("usr/share/doc/*/copyright"):
        for line in cr.read_text(errors="replace").splitlines():
            if re.match(r"\s*(License|Licence|Copyright)\s*:", line) or re.search(r"\b(GPL|LGPL|CC-BY|Creative Commons|CC0|public domain)\b", line, re.I):
                licence.append(line.strip())
    licence = list(dict.fromkeys(licence))  # unique, in order
    lines += [f"## {pkg} {version}", "", f"{len(taken)} photos. Licence lines of usr/share/doc/{pkg}/copyright:", ""]
    lines += [f"    {l}" for l in licence[:60]] or ["    (no copyright file found)"]
    lines += ["", "Files (taken as <- source path in the package):", ""]
    lines += [f"- `{n}` <- `{r}`" for n, r in taken]
    lines.append("")
(out / "LICENSES.md").write_text("\n".join(lines) + "\n")
print(f"{total} photos in {out}", file=sys.stderr)
PY
