"""detjax.anchors: anchor points / boxes, k-means and YOLOv5 autoanchor."""

import jax
import numpy as np
import pytest

from detjax.anchors import make_anchor_points


def test_anchor_points_oracle():
    pts, s = jax.jit(make_anchor_points, static_argnums=(0, 1))(((2, 3), (1, 2)), (8, 16))
    want = [(x + 0.5, y + 0.5) for y in range(2) for x in range(3)]
    want += [(x + 0.5, 0.5) for x in range(2)]
    np.testing.assert_array_equal(pts, want)
    np.testing.assert_array_equal(s[:, 0], [8] * 6 + [16] * 2)
    with pytest.raises(ValueError, match="stride"):
        make_anchor_points([(2, 2)], [8, 16])


@pytest.mark.peers
def test_anchor_points_parity_ultralytics():
    torch = pytest.importorskip("torch")
    tal = pytest.importorskip("ultralytics.utils.tal")
    shapes, strides = [(80, 60), (40, 30), (20, 15)], [8, 16, 32]
    feats = [torch.zeros(1, 2, h, w) for h, w in shapes]
    want_p, want_s = tal.make_anchors(feats, torch.tensor(strides, dtype=torch.float32), 0.5)
    got_p, got_s = make_anchor_points(shapes, strides)
    np.testing.assert_array_equal(got_p, want_p.numpy())
    np.testing.assert_array_equal(got_s, want_s.numpy())
