"""The report's depth tiles: where the rays enter the nearest bone and leave the farthest."""

from __future__ import annotations

import numpy as np
from regkit_recon.reconstruct.report import near_far


def _depth(last: bool) -> dict[str, np.ndarray]:
    hit = np.zeros((2, 1, 3), bool)
    hit[0, 0, :2] = True                          # bone 0 on pixels 0 and 1
    hit[1, 0, 1:] = True                          # bone 1 on pixels 1 and 2
    front = np.full((2, 2, 1, 3), np.nan, np.float32)
    back = np.full((2, 2, 1, 3), np.nan, np.float32)
    front[0, 0, 0, :2], back[0, 0, 0, :2] = 900.0, 910.0
    front[1, 0, 0, 1:], back[1, 0, 0, 1:] = 905.0, 920.0
    out = {"hit": hit, "front": front, "back": back}
    if last:
        out["last"] = np.where(hit, back[:, 0] + 4.0, np.nan).astype(np.float32)
    return out


def test_near_far_first_layer_without_last_exit() -> None:
    near, far = near_far(_depth(last=False))
    np.testing.assert_allclose(near, [[900.0, 900.0, 905.0]])
    np.testing.assert_allclose(far, [[910.0, 920.0, 920.0]])


def test_near_far_reaches_the_last_exit_where_given() -> None:
    near, far = near_far(_depth(last=True))
    np.testing.assert_allclose(near, [[900.0, 900.0, 905.0]])
    np.testing.assert_allclose(far, [[914.0, 924.0, 924.0]])


def test_near_far_nan_where_no_bone() -> None:
    depth = _depth(last=True)
    depth["hit"][:, 0, 1] = False
    near, far = near_far(depth)
    assert np.isnan(near[0, 1])
    assert np.isnan(far[0, 1])
    assert np.isfinite(near[0, [0, 2]]).all()
    assert np.isfinite(far[0, [0, 2]]).all()
