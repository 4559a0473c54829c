"""Figures logged with every run: a person would rather look at these than read them."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on workers

import matplotlib.pyplot as plt


def training_curve(history: list[dict[str, Any]], title: str):
    """Loss per epoch (per protocol fit when several were trained)."""
    figure, axis = plt.subplots(figsize=(6, 3.5))
    series: dict[str, list[tuple[int, float]]] = {}
    for row in history:
        series.setdefault(row.get("fit", "final"), []).append((row["epoch"], row["loss"]))
    for name, points in series.items():
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    axis.set_xlabel("epoch")
    axis.set_ylabel("training loss")
    axis.set_title(title)
    axis.legend(fontsize="small")
    figure.tight_layout()
    return figure


def metric_bars(metrics: dict[str, dict[str, float]], title: str):
    """One group of bars per protocol: the model's metrics at 10."""
    protocols = list(metrics)
    names = sorted({name for values in metrics.values() for name in values})
    figure, axis = plt.subplots(figsize=(max(6, 1.4 * len(protocols) * len(names) / 3), 3.5))
    width = 0.8 / max(1, len(names))
    for offset, name in enumerate(names):
        xs = [i + offset * width for i in range(len(protocols))]
        axis.bar(xs, [metrics[p].get(name, 0.0) for p in protocols], width, label=name)
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(protocols))], protocols)
    axis.set_ylim(0, 1)
    axis.set_title(title)
    axis.legend(fontsize="x-small", ncol=4)
    figure.tight_layout()
    return figure


def close(figure) -> None:
    plt.close(figure)
