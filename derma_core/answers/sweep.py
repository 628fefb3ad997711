"""``derma sweep-prompts`` without click: one backend run once per prompt under a parent MLflow
run, with a table and a prompt-sensitivity figure logged there (:func:`sweep_prompts`); every
prompt is built for the dataset's label set first (:func:`check_prompts`).
"""

from __future__ import annotations

from typing import Iterable

from ..labels import LabelSet


def check_prompts(prompts: Iterable[str], label_set: LabelSet) -> None:
    """Build every prompt for ``label_set`` before any run starts: an unknown prompt, or one of the
    study's HAM10000-only wordings on another dataset, is one line here, not a failed child run."""
    from .. import plugins

    for name in prompts:
        plugins.get_prompt_builder(name)(label_set)


def sweep_prompts(plugin: str, prompts: list[str], config_file=None, overrides=(), metric: str = "macro_f1",
                  experiment: str | None = None, tracking_uri: str | None = None, plugin_config=None) -> dict:
    """Run ``plugin`` once per prompt under one parent MLflow run; log a table and a figure there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from .. import plugins, runner, tracking
    from ..config import resolve_config

    values = {"tracking.uri": tracking_uri, "tracking.experiment": experiment}
    base = resolve_config(plugin, config_file, overrides, values, plugin_config=plugin_config)
    split = base["evaluation"]["split"]
    dataset = runner.load_dataset(base)
    check_prompts(prompts, dataset.label_set)
    # a split the runs need without rows: one line before the parent run exists
    runner.check_dataset_splits(dataset, plugins.get_classifier(plugin), split)
    exp_name = base["tracking"].get("experiment") or dataset.name
    rows = []
    tags = {tracking.TAG_KIND: "sweep-prompts", tracking.TAG_PLUGIN: plugin, tracking.TAG_DATASET: dataset.name,
            tracking.TAG_DATASET_DIGEST: dataset.digest, tracking.TAG_LABEL_SET: ",".join(dataset.label_set.codes)}
    with tracking.start_run(exp_name, run_name=f"sweep-prompts {plugin}", tags=tags,
                            uri=base["tracking"].get("uri")) as parent:
        parent.log_params({"plugin": plugin, "prompts": ",".join(prompts), "metric": metric})
        for name in prompts:
            config = resolve_config(plugin, config_file, list(overrides) + [f"prompt={name}"], values,
                                    plugin_config=plugin_config)
            config["tracking"]["run_name"] = f"{plugin} {name}"
            result = runner.run(config, parent_run_id=parent.run_id, extra_tags={"derma.prompt": name})
            key = f"{split}_{metric}"
            rows.append({"prompt": name, "run_id": result.run_id, "value": result.metrics.get(key, float("nan")),
                         "low": result.metrics.get(f"{key}_ci_low"), "high": result.metrics.get(f"{key}_ci_high"),
                         "invalid_rate": result.metrics.get(f"{split}_invalid_rate")})
            parent.log_metrics({f"{name}_{metric}": rows[-1]["value"]})
        table = pd.DataFrame(rows)
        parent.log_table(table, "prompt_sensitivity.csv")
        fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(rows)), 3.5))
        x = list(range(len(rows)))
        vals = [r["value"] for r in rows]
        has_ci = all(r["low"] is not None and r["high"] is not None for r in rows)
        if has_ci:
            err = [[v - r["low"] for v, r in zip(vals, rows)], [r["high"] - v for v, r in zip(vals, rows)]]
            ax.errorbar(x, vals, yerr=err, fmt="o", capsize=4)
        else:
            ax.plot(x, vals, "o")
        ax.set_xticks(x, [r["prompt"] for r in rows])
        ax.set_ylabel(f"{split} {metric}" + (" (bootstrap CI)" if has_ci else ""))
        ax.set_title(f"prompt sensitivity: {plugin}")
        fig.tight_layout()
        parent.log_figure(fig, "figures/prompt_sensitivity.png")
        parent_id = parent.run_id
    return {"parent_run_id": parent_id, "rows": rows, "split": split}
