"""Evaluation cost on a 2,000-image synthetic test set: every built-in evaluator (classification
with 1,000 lesion-level bootstrap resamples, probabilistic, subgroups, selective, calibration,
conformal) against the cost of a naive bootstrap, i.e. one plain scikit-learn metric call per
resample, measured in the same process.

The test set is the synthetic generator's metadata (HAM10000's class proportions, lesions of
1-6 images, sex / age / localization / dx_type); the probabilities come from a logistic
regression on each lesion's drawn appearance with noise (a realistic, imperfect model); a
separate 1,000-image synthetic set plays val for calibration and conformal sets.

  python benchmarks/evaluation.py                  # 2,000 test images, 1,000 resamples
  python benchmarks/evaluation.py --test 5000 --resamples 2000 --rounds 3

It prints the load average with the results and keeps the best of ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MPLBACKEND", "Agg")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--test", type=int, default=2000, help="test images")
    p.add_argument("--val", type=int, default=1000, help="val (calibration) images")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--rounds", type=int, default=2, help="rounds (best kept)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_split(name, n, seed, model=None):
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from derma_core.data.synthetic import build_metadata
    from derma_core.interfaces import Predictions, Split
    from derma_core.labels import LABELS

    meta = build_metadata(n, seed)
    rng = np.random.default_rng(seed)
    feats = pd.get_dummies(meta["draw_as"]).reindex(columns=list(LABELS), fill_value=0).to_numpy(dtype=float)
    x = feats + rng.normal(0, 0.9, feats.shape)
    y = meta["dx"].map({l: i for i, l in enumerate(LABELS)}).to_numpy()
    if model is None:
        model = LogisticRegression(max_iter=2000).fit(x, y)
    p = np.zeros((n, 7))
    p[:, model.classes_] = model.predict_proba(x)
    frame = pd.DataFrame({"id": meta["image_id"], "label": meta["dx"], "lesion_id": meta["lesion_id"],
                          "image_path": "x.jpg", "dx_type": meta["dx_type"], "age": meta["age"],
                          "sex": meta["sex"], "localization": meta["localization"]})
    split = Split(name, frame, ".")
    return split, Predictions(split.ids, [LABELS[i] for i in p.argmax(1)], p), model


def main(argv=None) -> int:
    args = parse_args(argv)
    import io

    import numpy as np
    from sklearn.metrics import f1_score

    from derma_core.config import resolve_config
    from derma_core.evaluation.evaluators import EVALUATORS, Reference
    from derma_core.evaluation.metrics import CLASS_INDICES

    val, pv, model = make_split("val", args.val, args.seed + 1)
    test, pt, _ = make_split("test", args.test, args.seed + 2, model)
    config = resolve_config(None, overrides=[f"evaluation.bootstrap={args.resamples}"])
    ref = Reference(val, pv)

    # baseline: one plain sklearn metric call on a resample-sized input, times the resamples
    y, yp = test.y, pt.y_pred
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(y), size=(20, len(y)))
    best_call = float("inf")
    for _ in range(args.rounds):
        t = time.perf_counter()
        for row in idx:
            f1_score(y[row], yp[row], labels=CLASS_INDICES, average="macro", zero_division=np.nan)
        best_call = min(best_call, (time.perf_counter() - t) / len(idx))
    naive = best_call * args.resamples

    best: dict[str, float] = {}
    png: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, fn in EVALUATORS.items():
            t = time.perf_counter()
            r = fn(test, pt, config, reference=ref) if getattr(fn, "uses_reference", False) else fn(test, pt, config)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
            t = time.perf_counter()
            for fig in r.figures.values():
                fig.savefig(io.BytesIO(), format="png", dpi=100)  # what the tracker does when logging
            png[name] = min(png.get(name, float("inf")), time.perf_counter() - t)
    total = sum(best.values())
    best_fig = sum(png.values())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"evaluation of {len(test)} test images ({test.frame['lesion_id'].nunique()} lesions), "
          f"{len(val)} val images, {args.resamples} bootstrap resamples; load average {load:.2f}, "
          f"best of {args.rounds} rounds")
    print(f"  {'evaluator':<15} {'compute':>8}   {'PNG':>7}")
    for name, secs in best.items():
        print(f"  {name:<15} {secs:8.3f} s {png[name]:7.3f} s")
    print(f"  {'all evaluators':<15} {total:8.3f} s  (metrics, tables and figure objects)")
    print(f"  {'PNG encoding':<15} {best_fig:8.3f} s  (what logging the figures adds)")
    print(f"baseline: one sklearn f1_score call = {best_call * 1e3:.2f} ms; x {args.resamples} resamples = "
          f"{naive:.2f} s (a naive bootstrap of ONE metric, overall only)")
    print(f"ratio: all evaluators / naive one-metric bootstrap = {total / naive:.2f}x (the evaluators give 3 metrics "
          f"with intervals overall and for every subgroup, plus calibration, conformal and selective results)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
