"""Pictures of the features of one image, for reports and the notebook.

The plotting functions build :class:`matplotlib.figure.Figure` objects directly (no
``pyplot``, no global backend change), so they work headless; save them with
``fig.savefig(path)`` or let Jupyter display them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cvpipe.errors import ConfigError
from cvpipe.features._hog import hog_cells
from cvpipe.features.color import CHANNEL_NAMES, ColorHistParams, color_histogram


def _one_image(image: Any) -> np.ndarray:
    x = np.asarray(image.detach().cpu().numpy() if hasattr(image, "detach") else image)
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[-1] not in (1, 3)):
        raise ConfigError(
            f"expected one image of shape (H, W), (H, W, 1) or (H, W, 3), not {x.shape}"
        )
    return x


def hog_glyphs(
    image: Any,
    orientations: int = 9,
    pixels_per_cell: tuple[int, int] | int = (8, 8),
    transform_sqrt: bool = False,
    channel_axis: int | None = -1,
    scale: int = 1,
) -> np.ndarray:
    """HOG glyph image of one image, as ``skimage.feature.hog(..., visualize=True)`` draws it.

    For each cell and orientation bin, a line through the cell centre perpendicular to the
    bin's mid-angle, of brightness equal to the cell's histogram value, is added to the
    canvas. With ``scale=1`` the result equals scikit-image's ``hog_image``.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array_like
        The image (uint8 or float).
    orientations, pixels_per_cell, transform_sqrt, channel_axis
        As in :func:`cvpipe.features.hog` (block parameters do not affect the glyphs).
    scale : int, optional
        Draw on a canvas ``scale`` times larger (longer, better resolved lines for small
        images such as CIFAR-10's 32x32).

    Returns
    -------
    glyphs : (H * scale, W * scale) ndarray of float64
    """
    from skimage.draw import line

    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ConfigError(f"scale must be a positive integer, not {scale!r}")
    x = _one_image(image)
    if x.ndim == 2:
        x = x[..., None]
    cells = hog_cells(
        x[None], orientations, pixels_per_cell, transform_sqrt, channel_axis, n_jobs=1
    )[0]
    n_cells_row, n_cells_col, _ = cells.shape
    c_row, c_col = (int(v) * scale for v in np.broadcast_to(pixels_per_cell, (2,)))
    s_row, s_col = x.shape[0] * scale, x.shape[1] * scale
    radius = min(c_row, c_col) // 2 - 1
    mid = np.pi * (np.arange(orientations) + 0.5) / orientations
    dr_arr = radius * np.sin(mid)
    dc_arr = radius * np.cos(mid)
    canvas = np.zeros((s_row, s_col), dtype=np.float64)
    for r in range(n_cells_row):
        for c in range(n_cells_col):
            centre = (r * c_row + c_row // 2, c * c_col + c_col // 2)
            for o in range(orientations):
                rr, cc = line(
                    int(centre[0] - dc_arr[o]),
                    int(centre[1] + dr_arr[o]),
                    int(centre[0] + dc_arr[o]),
                    int(centre[1] - dr_arr[o]),
                )
                canvas[rr, cc] += cells[r, c, o]
    return canvas


def plot_hog(
    image: Any,
    orientations: int = 9,
    pixels_per_cell: tuple[int, int] | int = (8, 8),
    transform_sqrt: bool = False,
    channel_axis: int | None = -1,
    scale: int = 8,
    title: str | None = None,
) -> Any:
    """Figure with the image and its HOG glyphs side by side.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    x = _one_image(image)
    glyphs = hog_glyphs(x, orientations, pixels_per_cell, transform_sqrt, channel_axis, scale)
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax_img, ax_hog = fig.subplots(1, 2)
    show = x[..., 0] if x.ndim == 3 and x.shape[-1] == 1 else x
    ax_img.imshow(show, cmap="gray" if show.ndim == 2 else None, interpolation="nearest")
    ax_img.set_title("image")
    top = glyphs.max()
    ax_hog.imshow(glyphs / top if top > 0 else glyphs, cmap="gray", vmin=0, vmax=1)
    ax_hog.set_title(f"HOG, {orientations} orientations, cells {pixels_per_cell}")
    for ax in (ax_img, ax_hog):
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return fig


def _bin_centre_colours(p: ColorHistParams) -> np.ndarray:
    """RGB colour (float in [0, 1]) of the centre of every joint bin, (n_bins, 3)."""
    import cv2

    centres = [
        lo + (np.arange(nb) + 0.5) * (hi - lo) / nb
        for nb, (lo, hi) in zip(p.bins, p.ranges, strict=True)
    ]
    grid = np.stack(np.meshgrid(*centres, indexing="ij"), axis=-1).reshape(1, -1, len(p.bins))
    vals = np.clip(np.rint(grid), 0, 255).astype(np.uint8)
    if p.space == "rgb":
        rgb = vals
    elif p.space == "hsv":
        rgb = cv2.cvtColor(vals, cv2.COLOR_HSV2RGB)
    elif p.space == "lab":
        rgb = cv2.cvtColor(vals, cv2.COLOR_Lab2RGB)
    else:
        rgb = np.repeat(vals, 3, axis=-1)
    return rgb.reshape(-1, 3) / 255.0


def plot_color_histogram(
    image: Any,
    space: str = "hsv",
    bins: int | tuple[int, ...] = (8, 4, 4),
    joint: bool = False,
    norm: str | None = "l1",
    ranges: tuple[tuple[float, float], ...] | None = None,
    title: str | None = None,
) -> Any:
    """Figure with the image and its colour histogram (an intensity histogram for a gray
    image, as the features compute it).

    Per-channel histograms (``joint=False``) get one bar chart per channel; a joint
    histogram is one bar chart over the flattened bins, each bar painted with the colour
    at its bin's centre.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    x = _one_image(image)
    channels = x.shape[-1] if x.ndim == 3 else 1
    p = ColorHistParams.make(space, bins, joint, (1, 1), norm, ranges).for_channels(channels)
    hist = color_histogram(
        x[None], p.space, p.bins, p.joint, (1, 1), p.norm, p.ranges, backend="numpy", n_jobs=1
    )[0]
    names = CHANNEL_NAMES[p.space]
    panels = 1 if p.joint else len(p.bins)
    fig = Figure(figsize=(3 + 3.2 * panels, 3), layout="constrained")
    axes = fig.subplots(1, panels + 1, width_ratios=[1] + [1.5] * panels)
    show = x[..., 0] if x.ndim == 3 and x.shape[-1] == 1 else x
    axes[0].imshow(show, cmap="gray" if show.ndim == 2 else None, interpolation="nearest")
    axes[0].set_axis_off()
    axes[0].set_title("image")
    ylabel = {"l1": "fraction of pixels", "l2": "L2-normalised count", None: "pixels"}[p.norm]
    if p.joint:
        colours = _bin_centre_colours(p)
        ax = axes[1]
        ax.bar(np.arange(len(hist)), hist, width=1.0, color=colours, edgecolor="0.25",
               linewidth=0.3)
        ax.set_xlabel(f"joint {p.space.upper()} bin ({' x '.join(map(str, p.bins))})")
        ax.set_ylabel(ylabel)
        ax.set_xlim(-0.5, len(hist) - 0.5)
    else:
        start = 0
        for i, (nb, (lo, hi)) in enumerate(zip(p.bins, p.ranges, strict=True)):
            ax = axes[i + 1]
            edges = np.linspace(lo, hi, nb + 1)
            ax.bar(edges[:-1], hist[start : start + nb], width=np.diff(edges), align="edge",
                   color="0.35", edgecolor="white")
            ax.set_xlabel(f"{names[i]} ({p.space.upper()})")
            ax.set_xlim(lo, hi)
            if i == 0:
                ax.set_ylabel(ylabel)
            start += nb
    if title:
        fig.suptitle(title)
    return fig
