"""Box augmentation for training: a small rotation, scaling and jitter of a window's word boxes.

Applied as windows are read for training (see ``WindowSet(augment=...)``), so the stored tensors never
change and validation and test never see it. Special tokens keep their fixed boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from receipt_pipeline.core.bio import BOX_SCALE


@dataclass
class BoxAugmentation:
    max_rotation_degrees: float = 2.0
    max_scale: float = 0.05  # the page grows or shrinks by up to this share around its centre
    max_jitter: float = 3.0  # each edge moves by up to this many units of 1000
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, bbox: np.ndarray, special: np.ndarray) -> np.ndarray:
        """An augmented copy of ``bbox`` (n x 4, 0..1000); rows where ``special`` is true are unchanged."""
        boxes = bbox.astype(np.float64)
        words = ~np.asarray(special, dtype=bool)
        if not words.any():
            return bbox.copy()
        angle = np.deg2rad(self.rng.uniform(-self.max_rotation_degrees, self.max_rotation_degrees))
        scale = 1.0 + self.rng.uniform(-self.max_scale, self.max_scale)
        centre = BOX_SCALE / 2
        # rotate and scale the four corners of each box, then take their bounding box
        xs = boxes[words][:, [0, 2, 2, 0]] - centre
        ys = boxes[words][:, [1, 1, 3, 3]] - centre
        cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
        rx, ry = xs * cos - ys * sin + centre, xs * sin + ys * cos + centre
        moved = np.column_stack([rx.min(axis=1), ry.min(axis=1), rx.max(axis=1), ry.max(axis=1)])
        moved += self.rng.uniform(-self.max_jitter, self.max_jitter, size=moved.shape)
        moved = np.clip(np.rint(moved), 0, BOX_SCALE)
        lower = np.minimum(moved[:, :2], moved[:, 2:])
        upper = np.maximum(moved[:, :2], moved[:, 2:])
        result = bbox.copy()
        result[words] = np.column_stack([lower, upper]).astype(bbox.dtype)
        return result
