"""The static dashboard: one HTML page under ``<home>/monitoring/dashboard.html``.

Three plots, embedded in the page (no server needed; also logged to MLflow per hour):
CTR per hour and traffic arm with its Wilson interval, one line per model version, with the
alarms and the promotions on online evidence as vertical lines; the off-policy estimates of
each candidate with their intervals next to the champion's observed CTR; and the tables of
alarms and of retraining and promotion decisions.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on workers

import matplotlib.pyplot as plt
import pandas as pd

from recloop.settings import Settings


def _ctr_figure(metrics: pd.DataFrame, alarms: pd.DataFrame, decisions: pd.DataFrame):
    figure, axis = plt.subplots(figsize=(9, 4))
    if metrics.empty:
        axis.text(0.5, 0.5, "nothing served yet", ha="center", transform=axis.transAxes)
        return figure
    hourly = metrics[metrics["window"] == "hour"]
    for (arm, version), rows in hourly.groupby(["arm", "model_version"], sort=True):
        rows = rows.sort_values("hour_end")
        line = axis.plot(rows["hour_end"], rows["ctr"], marker="o", ms=3,
                         label=f"{arm} v{version}")[0]  # fmt: skip
        axis.fill_between(rows["hour_end"], rows["ctr_low"], rows["ctr_high"],
                          color=line.get_color(), alpha=0.2)  # fmt: skip
    for row in alarms.to_dict("records") if len(alarms) else []:
        axis.axvline(row["hour_end"], color="red" if row["kind"] == "degradation" else "orange",
                     linestyle="--", linewidth=1)  # fmt: skip
    promoted = (decisions[decisions["promoted"].notna()]
                if "promoted" in decisions else decisions.iloc[0:0])  # fmt: skip
    for row in promoted.to_dict("records"):
        axis.axvline(row["hour_end"], color="green", linewidth=1.5)
    axis.set_ylabel("CTR (95% Wilson interval)")
    axis.set_title("Click-through rate per hour and arm; dashed: alarms; green: promotions "
                   "on online evidence")  # fmt: skip
    if len(hourly):
        axis.legend(fontsize="small")
    figure.autofmt_xdate()
    figure.tight_layout()
    return figure


def _ope_figure(off_policy: pd.DataFrame):
    figure, axis = plt.subplots(figsize=(9, 4))
    if off_policy.empty:
        axis.text(0.5, 0.5, "no candidate evaluated yet", ha="center", transform=axis.transAxes)
        return figure
    rows = off_policy[(off_policy["window"] == "hour")]
    for (version, estimator), part in rows.groupby(["candidate_version", "estimator"], sort=True):
        part = part.sort_values("hour_end")
        # Arrays, not Series: matplotlib reads a one-hour Series element with float(), which
        # pandas deprecates (and will make an error).
        below = (part["value"] - part["low"]).to_numpy()
        above = (part["high"] - part["value"]).to_numpy()
        axis.errorbar(part["hour_end"], part["value"], yerr=[below, above],
                      fmt="o-", ms=3, capsize=2, label=f"v{version} {estimator}")  # fmt: skip
    if len(rows):
        champion = rows.drop_duplicates("hour_end").sort_values("hour_end")
        axis.plot(
            champion["hour_end"], champion["champion_ctr"], "k--", label="champion (observed)"
        )
        axis.legend(fontsize="small")
    axis.set_ylabel("estimated CTR")
    axis.set_title("Off-policy estimates of candidates on the champion's logged slates")
    figure.autofmt_xdate()
    figure.tight_layout()
    return figure


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode()


def render(settings: Settings, tables: dict[str, pd.DataFrame]) -> tuple[Path, dict[str, object]]:
    """Write the page from the monitoring store's tables (``store.read_all``); returns it
    and the figures."""
    metrics, off_policy = tables["online_metrics"], tables["off_policy"]
    alarms, decisions = tables["alarms"], tables["decisions"]
    figures = {"ctr": _ctr_figure(metrics, alarms, decisions),
               "off_policy": _ope_figure(off_policy)}  # fmt: skip
    images = "".join(
        f'<h2>{html.escape(name)}</h2><img alt="{name}" src="data:image/png;base64,{_png(f)}">'
        for name, f in figures.items()
    )
    latest = metrics[metrics["hour_end"] == metrics["hour_end"].max()] if len(metrics) else metrics
    tables = "".join(
        f"<h2>{title}</h2>" + (frame.to_html(index=False, float_format=lambda v: f"{v:.4f}")
                               if len(frame) else "<p>none</p>")
        for title, frame in (("Latest hour", latest), ("Alarms", alarms),
                             ("Retraining and promotion decisions", decisions))
    )  # fmt: skip
    page = settings.monitoring_dir / "dashboard.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>recloop online metrics</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
        "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>"
        f"<h1>recloop online metrics</h1>{images}{tables}</body></html>"
    )
    for figure in figures.values():
        plt.close(figure)
    return page, figures
