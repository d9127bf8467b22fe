"""ROC and DET figures for a verification run.

Figures are drawn on a bare `Figure` with the Agg canvas instead of through pyplot, so plotting
needs no display, touches no global backend state and is safe to call from a server thread.
"""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from tools.evaluation.scores import auc, eer, roc

_CURVE = "#1f4e79"
_EER = "#c0392b"
_REFERENCE = "#8c8c8c"
_OPERATING = "#e67e22"
# DET axis ticks (Martin et al. 1997 use a similar set); only those inside the data range show.
_DET_TICKS = (1e-5, 1e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.4)
_DET_MAX = 0.5


def _probit(p: np.ndarray) -> np.ndarray:
    """Map probabilities to normal deviates, the DET axis scale.

    On it, two Gaussian score distributions give a straight line (Martin et al. 1997).
    """
    inv_cdf = NormalDist().inv_cdf
    return np.array([inv_cdf(float(x)) for x in p])


def _tick_label(p: float) -> str:
    return f"{np.format_float_positional(p * 100, trim='-')}%"


def _eer_label(eer_: float) -> str:
    return f"EER {eer_ * 100:.2f}%"


def _draw_roc(ax: Axes, fmr: np.ndarray, tmr: np.ndarray, n_impostors: int, eer_: float) -> None:
    """ROC with a log FMR axis, which is where a bank operates (FMR 1e-2 and below)."""
    floor = min(10.0 ** np.floor(np.log10(1.0 / n_impostors)), 1e-2)
    shown = fmr > 0
    ax.plot(fmr[shown], tmr[shown], color=_CURVE, lw=1.8, label="ROC")
    if eer_ > 0:
        ax.plot(eer_, 1 - eer_, "o", ms=7, color=_EER, label=_eer_label(eer_))
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    # Zoom in on the visible curve and the EER point: good systems live in the top percent.
    bottom = np.floor(10 * min(tmr[shown].min(), 1 - eer_)) / 10
    ax.set_ylim(max(0.0, bottom - 0.05), 1.005)
    ax.set_xlabel("False match rate (FMR)")
    ax.set_ylabel("True match rate (1 - FNMR)")
    ax.set_title("ROC")
    ax.grid(True, which="major", alpha=0.5)
    ax.grid(True, which="minor", alpha=0.15)
    ax.legend(loc="lower right", frameon=True)


def _draw_det(
    ax: Axes, fmr: np.ndarray, fnmr: np.ndarray, n_impostors: int, n_genuine: int, eer_: float
) -> None:
    """DET (FMR against FNMR on normal-deviate axes), the ISO/IEC 19795-1 error trade-off plot."""
    low = min(1.0 / n_impostors, 1.0 / n_genuine, 0.1)
    ticks = [t for t in _DET_TICKS if low <= t <= _DET_MAX]
    lim = (_probit(np.array([min(ticks[0], low)]))[0], _probit(np.array([_DET_MAX]))[0])

    shown = (fmr > 0) & (fmr < 1) & (fnmr > 0) & (fnmr < 1)
    if shown.any():
        ax.plot(_probit(fmr[shown]), _probit(fnmr[shown]), color=_CURVE, lw=1.8, label="DET")
    else:
        ax.text(
            0.5,
            0.5,
            "no operating point with both error rates > 0",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color=_REFERENCE,
        )
    ax.plot(lim, lim, ls="--", lw=1, color=_REFERENCE, label="FMR = FNMR")
    if eer_ > 0:
        z = _probit(np.array([eer_]))[0]
        ax.plot(z, z, "o", ms=7, color=_EER, label=_eer_label(eer_))

    tick_positions = _probit(np.array(ticks))
    labels = [_tick_label(t) for t in ticks]
    ax.set_xticks(tick_positions, labels, rotation=45)
    ax.set_yticks(tick_positions, labels)
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_aspect("equal")
    ax.set_xlabel("False match rate (FMR)")
    ax.set_ylabel("False non-match rate (FNMR)")
    ax.set_title("DET")
    ax.grid(True, alpha=0.5)
    ax.legend(loc="upper right", frameon=True)


def _mark_operating_point(
    roc_ax: Axes, det_ax: Axes, scores: np.ndarray, positives: np.ndarray,
    operating: tuple[float, str],
) -> None:  # fmt: skip
    """The service's operating threshold as a point on both panels: the FMR and FNMR this run
    measures there (a zero rate sits on the axis floor, where a log axis can show it)."""
    threshold, target = operating
    fmr = float((scores[~positives] >= threshold).mean())
    fnmr = float((scores[positives] < threshold).mean())
    label = f"operating point (FMR target {target}): FMR {fmr:.2g}, FNMR {fnmr:.2%}"
    roc_floor = roc_ax.get_xlim()[0]
    roc_ax.plot(
        max(fmr, roc_floor), 1.0 - fnmr, "s", ms=7, color=_OPERATING, label=label, clip_on=False
    )
    roc_ax.legend(loc="lower right", frameon=True)
    low, high = det_ax.get_xlim()
    z = _probit(np.clip(np.array([fmr, fnmr]), 1e-9, 1 - 1e-9))
    point = np.clip(z, low, high)
    det_ax.plot(*point, "s", ms=7, color=_OPERATING, label="operating point", clip_on=False)
    det_ax.legend(loc="upper right", frameon=True)


def plot_roc_det(
    scores: ArrayLike, labels: ArrayLike, out_path: str | Path, title: str,
    operating: tuple[float, str] | None = None,
) -> Path:  # fmt: skip
    """Write a PNG with the ROC (log FMR axis) and DET (normal-deviate axes) of a run.

    Operating points with a zero rate cannot sit on a log or normal-deviate axis and are left
    out; the axes start at the smallest non-zero rate the run can measure (one error in the
    impostor or genuine set). The EER point is marked on both panels when it is not 0, and
    `operating` (threshold, FMR target) marks where the service decides. Returns the path
    written; missing parent folders are created.
    """
    fmr, tmr, _ = roc(scores, labels)
    positives = np.asarray(labels).astype(bool)
    n_genuine, n_impostors = int(positives.sum()), int((~positives).sum())
    eer_ = eer(scores, labels)

    fig = Figure(figsize=(12, 5.2), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    roc_ax, det_ax = fig.subplots(1, 2)
    _draw_roc(roc_ax, fmr, tmr, n_impostors, eer_)
    _draw_det(det_ax, fmr, 1.0 - tmr, n_impostors, n_genuine, eer_)
    if operating is not None:
        _mark_operating_point(roc_ax, det_ax, np.asarray(scores), positives, operating)
    fig.suptitle(
        f"{title}\n{n_genuine:,} genuine / {n_impostors:,} impostor pairs · "
        f"AUC {auc(scores, labels):.4f} · {_eer_label(eer_)}",
        fontsize=11,
    )

    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
