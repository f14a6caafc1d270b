"""Filling the colour under fully transparent pixels, so that upscaling does not pull dark fringes
into visible edges."""

from __future__ import annotations

import cv2
import numpy as np

# ------------------------------------------------------------------------------------------- alpha fill


def fill_transparent(pixels: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Give fully transparent pixels the colour of the nearest visible ones; others are untouched.

    The colour hidden under alpha == 0 is arbitrary (often black). An upscaler's receptive field spans the
    edge, so that colour bleeds into visible edge pixels as a dark fringe. This is normalised convolution
    on a Gaussian pyramid (push-pull): blur(pixels * alpha) / blur(alpha) at scales 1, 2, 4, ... down to
    1x1, and each pixel takes its value from the finest scale at which visible pixels reach it. Holes next
    to an edge therefore get that edge's colour, and wide holes a smooth blend of their surroundings.
    """
    p = np.asarray(pixels, dtype=np.float32)
    a = np.asarray(alpha, dtype=np.float32)
    if p.ndim != 3 or a.shape != p.shape[:2]:
        raise ValueError(f"need pixels (H, W, C) and alpha (H, W), got {p.shape} and {a.shape}")
    out = p.copy()
    hole = a < 1.0 / 255.0
    if not hole.any() or hole.all():
        return out
    weight = np.where(hole, np.float32(0), np.clip(a, 0.0, 1.0))
    height, width, channels = p.shape
    # Colour premultiplied by weight, with the weight as the last channel: one pyramid for both.
    base = np.empty((height, width, channels + 1), np.float32)
    np.multiply(p, weight[..., None], out=base[..., :channels])
    base[..., channels] = weight
    levels = [base]
    while levels[-1].shape[0] > 1 or levels[-1].shape[1] > 1:
        h, w = levels[-1].shape[:2]
        down = cv2.pyrDown(levels[-1], dstsize=((w + 1) // 2, (h + 1) // 2))
        levels.append(down.reshape(down.shape[0], down.shape[1], channels + 1))
    tiny = np.float32(1e-30)
    top = levels[-1]
    fill = top[..., :channels] / np.maximum(top[..., channels:], tiny)
    for level in reversed(levels[1:-1]):
        h, w = level.shape[:2]
        coarse = cv2.pyrUp(fill, dstsize=(w, h)).reshape(h, w, channels)
        weight_sum = level[..., channels:]
        local = level[..., :channels] / np.maximum(weight_sum, tiny)
        # Trust this scale wherever visible pixels reach it at all; the ramp (rather than a hard switch)
        # only smooths the frontier where their reach ends.
        trust = np.clip(weight_sum * np.float32(1024), 0.0, 1.0)
        fill = trust * local + (1.0 - trust) * coarse
    # At full resolution a hole has no weight of its own, so it takes the upsampled fill as it is.
    fill = cv2.pyrUp(fill, dstsize=(width, height)).reshape(height, width, channels)
    np.copyto(out, fill, where=hole[..., None])
    return out
