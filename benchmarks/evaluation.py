"""Evaluation cost on a 2,000-image HAM10000-like test set: every built-in evaluator
(classification with 1,000 group-level bootstrap resamples, probabilistic, subgroups,
selective, calibration, conformal) against the cost of a naive bootstrap, i.e. one plain
scikit-learn metric call per resample, measured in the same process.

The test set has HAM10000's classes in their published proportions (``--classes K`` uses K
made-up classes instead, e.g. 114 like Fitzpatrick17k's finest level, with a malignancy
grouping and a focus class), lesions of 1-6 images, and sex / age / localization / dx_type
(HAM10000's subgroup columns). The probabilities come from a logistic regression on each
lesion's appearance (its class, or another one for 15% of lesions) with noise: a realistic,
imperfect model. A separate 1,000-image set plays val for calibration and conformal sets.

  python benchmarks/evaluation.py                  # 2,000 test images, 1,000 resamples
  python benchmarks/evaluation.py --test 5000 --resamples 2000 --rounds 3
  python benchmarks/evaluation.py --classes 114 --test 6000

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
    p.add_argument("--classes", type=int, default=0, help="K made-up classes instead of HAM10000's 7 (2 or more)")
    p.add_argument("--rounds", type=int, default=2, help="rounds (best kept)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.classes == 1 or args.classes < 0:
        p.error("--classes must be 0 (HAM10000's) or at least 2")
    return args


def label_set_for(classes: int):
    from derma_core.data.datasets.ham10000 import CLASS_COUNTS, LABEL_SET
    from derma_core.labels import LabelSet

    if not classes:
        return LABEL_SET, [CLASS_COUNTS[c] for c in LABEL_SET.codes]
    codes = tuple(f"d{i:03d}" for i in range(classes))
    label_set = LabelSet(codes=codes, groupings={"malignancy": {c: "malignant" if i % 4 == 0 else "benign"
                                                                for i, c in enumerate(codes)}},
                         positive={"malignancy": "malignant"}, focus=codes[0])
    return label_set, [1.0 / (i + 2) for i in range(classes)]  # a long tail, like a real finer level


def make_split(name, n, seed, label_set, shares, model=None):
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from derma_core.interfaces import Predictions, Split

    rng = np.random.default_rng(seed)
    k = len(label_set)
    p_class = np.asarray(shares, dtype=float) / np.sum(shares)
    rows, lesion = [], 0
    sites = ["back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest", "scalp"]
    while len(rows) < n:
        y = int(rng.choice(k, p=p_class))
        look = y if rng.random() > 0.15 else int(rng.integers(k))
        meta = {"sex": str(rng.choice(["male", "female"])), "age": f"{float(np.clip(rng.normal(52, 16), 5, 85)):.1f}",
                "localization": str(rng.choice(sites)), "dx_type": str(rng.choice(["histo", "follow_up", "consensus"]))}
        for _ in range(int(rng.integers(1, 7))):
            rows.append({"id": f"{name}_{len(rows):06d}", "y": y, "look": look, "group_id": f"L{lesion:06d}", **meta})
        lesion += 1
    frame = pd.DataFrame(rows[:n])
    x = np.eye(k)[frame["look"]] + rng.normal(0, 0.9, (n, k))
    y = frame["y"].to_numpy()
    if model is None:
        model = LogisticRegression(max_iter=2000).fit(x, y)
    p = np.zeros((n, k))
    p[:, model.classes_] = model.predict_proba(x)
    frame = frame.assign(label=[label_set.codes[i] for i in y], image_path="x.jpg").drop(columns=["y", "look"])
    split = Split(name, frame, ".", label_set=label_set)
    preds = Predictions(split.ids, [label_set.codes[i] for i in p.argmax(1)], p, label_set=label_set)
    return split, preds, model


def main(argv=None) -> int:
    args = parse_args(argv)
    import io

    import numpy as np
    from sklearn.metrics import f1_score

    from derma_core.config import resolve_config
    from derma_core.data.datasets.ham10000 import DESCRIPTOR
    from derma_core.evaluation.evaluators import EVALUATORS
    from derma_core.evaluation.metrics import class_indices
    from derma_core.interfaces import EvalInput, EvalReference

    label_set, shares = label_set_for(args.classes)
    descriptor = DESCRIPTOR.with_labels(label_set)  # HAM10000's subgroup columns, these classes
    val, pv, model = make_split("val", args.val, args.seed + 1, label_set, shares)
    test, pt, _ = make_split("test", args.test, args.seed + 2, label_set, shares, model)
    config = resolve_config(None, overrides=[f"evaluation.bootstrap={args.resamples}"])
    reference = EvalReference(val, pv)

    # baseline: one plain sklearn metric call on a resample-sized input, times the resamples
    y, yp = test.y, pt.y_pred
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(y), size=(20, len(y)))
    best_call = float("inf")
    for _ in range(args.rounds):
        t = time.perf_counter()
        for row in idx:
            f1_score(y[row], yp[row], labels=class_indices(len(label_set)), average="macro", zero_division=np.nan)
        best_call = min(best_call, (time.perf_counter() - t) / len(idx))
    naive = best_call * args.resamples

    best: dict[str, float] = {}
    png: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, builtin in EVALUATORS.items():
            inputs = EvalInput(test, pt, config, dataset=descriptor,
                               reference=reference if builtin.needs_reference else None)
            t = time.perf_counter()
            r = builtin.evaluator(inputs)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
            t = time.perf_counter()
            for fig in r.figures.values():
                fig.savefig(io.BytesIO(), format="png", dpi=100)  # what the tracker does when logging
            png[name] = min(png.get(name, float("inf")), time.perf_counter() - t)
    total = sum(best.values())
    best_fig = sum(png.values())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"evaluation of {len(test)} test images ({test.frame['group_id'].nunique()} lesions), {len(label_set)} "
          f"classes, {len(val)} val images, {args.resamples} bootstrap resamples; load average {load:.2f}, "
          f"best of {args.rounds} rounds")
    print(f"  {'evaluator':<15} {'compute':>8}   {'PNG':>7}")
    for name, secs in best.items():
        print(f"  {name:<15} {secs:8.3f} s {png[name]:7.3f} s")
    print(f"  {'all evaluators':<15} {total:8.3f} s  (metrics, tables and figure objects)")
    print(f"  {'PNG encoding':<15} {best_fig:8.3f} s  (what logging the figures adds)")
    print(f"baseline: one sklearn f1_score call = {best_call * 1e3:.2f} ms; x {args.resamples} resamples = "
          f"{naive:.2f} s (a naive bootstrap of ONE metric, overall only)")
    print(f"ratio: all evaluators / naive one-metric bootstrap = {total / naive:.2f}x (the evaluators give 3 metrics "
          f"and each grouping's sensitivity / specificity with intervals overall and for every subgroup, plus "
          f"calibration, conformal and selective results)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
