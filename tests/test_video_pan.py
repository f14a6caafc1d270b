"""scripts/video_pan.py (docs/degradations.md's video numbers): the pan, the stream and the flicker
figure mean what the docs say."""

from __future__ import annotations

import numpy as np

from srgan_cli.degradations.damage import bicubic_downscale
from srgan_cli.degradations.ops import stream_round_trip

from .conftest import load_script, make_photo


def test_pan_windows_are_exact_shifts_and_a_lossless_stream_does_not_flicker() -> None:
    module = load_script("video_pan")
    hr = make_photo(160, 240, seed=3)
    windows = module.pan_windows(hr, 4)
    assert len(windows) == 4 and windows[0].shape == (
        160,
        208,
        3,
    )  # 240 - 3 x 8 = 216, down to a multiple of 16
    step = module.STEP
    assert np.array_equal(windows[1][:, :-step], windows[0][:, step:])
    assert module.flicker(windows) == 0.0
    lr = [bicubic_downscale(w, module.SCALE) for w in windows]
    assert module.flicker(lr, step=step // module.SCALE) == 0.0  # the LR pans by whole pixels too

    lossless = stream_round_trip(lr, "libx264", 0)
    assert len(lossless) == 4 and lossless[0].shape == lr[0].shape
    assert module.flicker(lossless, step=step // module.SCALE) == 0.0  # 4:2:0 on even shifts: none
    lossy = stream_round_trip(lr, "libx264", 40)
    assert module.flicker(lossy, step=step // module.SCALE) > 0.05
    # frames come back in display order, each nearest its own input
    for i, frame in enumerate(lossy):
        errors = [np.abs(frame.astype(int) - x).mean() for x in lr]
        assert int(np.argmin(errors)) == i
