"""--fit stretch | pad | tile on frames larger than the model's grid: AbsRel and edge error on rendered scenes.

    python benchmarks/tiling.py                                   # tiny, 8 scenes, 2x and 4x its 64 px grid
    python benchmarks/tiling.py --count 16 --steps 10 --ensemble 2 --tiles 2,3,4 --json

Scenes come from percept_cli.data.scenes.render_scene (exact depth) at `--scale` times the model's
resolution on the short side, 4:3 landscape (tiny: 128x171 and 256x341). Each scene is predicted with
every fit (tile once per --tiles value), all scenes of one fit in one predict call (tiles batch like
any other inputs). Metrics (percept_cli.metrics): AbsRel after scale-and-shift alignment, and
edge_error, the relative gradient error at depth edges (|grad gt| / gt > 0.05). The table gives the
mean over scenes, the fraction of scenes where tile beats stretch, and seconds per image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--count", type=int, default=8, help="scenes per size")
    ap.add_argument("--scale", default="2,4", help="short side as multiples of the model's resolution")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--ensemble", type=int, default=1)
    ap.add_argument("--tiles", default="2,3,4", help="--tiles values to measure")
    ap.add_argument("--seed", type=int, default=1000, help="first scene seed")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", action="store_true", help="also print the rows as one JSON object on stdout")
    args = ap.parse_args(argv)

    from percept_cli.data.scenes import render_scene
    from percept_cli.hub import resolve_model
    from percept_cli.metrics import depth_metrics, edge_error
    from percept_cli.pipeline import Predictor, TaskInput

    pred = Predictor.from_source(resolve_model(args.model, progress=False), device=args.device)
    res = pred.settings("depth").resolution
    fits = [("stretch", None), ("pad", None)] + [("tile", int(n)) for n in args.tiles.split(",")]
    rows = []
    for mult in (float(m) for m in args.scale.split(",")):
        h = int(round(res * mult))
        w = int(round(h * 4 / 3))
        scenes = [render_scene(args.seed + i, (h, w)) for i in range(args.count)]
        items = [TaskInput(s.rgb, None, f"scene {args.seed + i}") for i, s in enumerate(scenes)]
        per_fit = {}
        for fit, tiles in fits:
            settings = pred.settings("depth", steps=args.steps, ensemble=args.ensemble, fit=fit,
                                     tiles=tiles if tiles is not None else None)
            t0 = time.perf_counter()
            results = pred.predict("depth", items, settings)
            seconds = (time.perf_counter() - t0) / len(items)
            valid = [np.ones(s.depth.shape, bool) for s in scenes]
            absrel = [depth_metrics(r.depth, s.depth, v)["abs_rel"] for r, s, v in zip(results, scenes, valid)]
            edge = [edge_error(r.depth, s.depth, v) for r, s, v in zip(results, scenes, valid)]
            per_fit[(fit, tiles)] = (absrel, edge)
            rows.append(dict(count=len(items), size=f"{h}x{w}", scale=mult, steps=args.steps, ensemble=args.ensemble,
                             fit=fit if tiles is None else f"tile {tiles}", abs_rel=float(np.mean(absrel)),
                             edge=float(np.nanmean(edge)), seconds_per_image=seconds))
            print(f"  {h}x{w} {rows[-1]['fit']}: AbsRel {rows[-1]['abs_rel']:.4f} edge {rows[-1]['edge']:.4f} "
                  f"({seconds:.2f} s/image)", file=sys.stderr, flush=True)
        base_a, base_e = per_fit[("stretch", None)]
        for row, (a, e) in zip(rows[-len(fits):], per_fit.values()):
            row["wins_abs_rel"] = float(np.mean(np.array(a) < np.array(base_a)))
            row["wins_edge"] = float(np.mean(np.array(e) < np.array(base_e)))

    print(f"model {args.model} ({res} px grid), scenes {args.seed}..{args.seed + args.count - 1}; "
          "wins = fraction of scenes better than stretch")
    print(f"{'count':>5} {'size':>8} {'steps':>5} {'ens':>3} {'fit':>8} {'AbsRel':>7} {'edge':>7} "
          f"{'wins A':>6} {'wins E':>6} {'s/img':>6}")
    for r in rows:
        print(f"{r['count']:>5} {r['size']:>8} {r['steps']:>5} {r['ensemble']:>3} {r['fit']:>8} {r['abs_rel']:>7.4f} "
              f"{r['edge']:>7.4f} {r['wins_abs_rel']:>6.2f} {r['wins_edge']:>6.2f} {r['seconds_per_image']:>6.2f}")
    out = {"model": args.model, "resolution": res, "rows": rows}
    if args.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
