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
        self._rng: np.random.Generator | None = None
        self._worker_seed: int | None = None  # the DataLoader worker's seed the generator was made for

    def _generator(self) -> np.random.Generator:
        """A generator of this worker and epoch. A DataLoader copies the dataset, and this object with it, into
        every worker, and again at every epoch: a generator made here once would make every worker, every
        epoch, repeat the same draws. Each worker gets a seed of its own that changes every epoch
        (``get_worker_info().seed``), so the generator is made again from it; in the main process (no
        workers) one generator simply goes on."""
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker_seed = None if info is None else int(info.seed)
        if self._rng is None or worker_seed != self._worker_seed:
            entropy = [self.seed] if worker_seed is None else [self.seed, worker_seed]
            self._rng, self._worker_seed = np.random.default_rng(entropy), worker_seed
        return self._rng

    def __call__(self, bbox: np.ndarray, special: np.ndarray) -> np.ndarray:
        """An augmented copy of ``bbox`` (n x 4, 0..1000); rows where ``special`` is true are unchanged."""
        rng = self._generator()
        boxes = bbox.astype(np.float64)
        words = ~np.asarray(special, dtype=bool)
        if not words.any():
            return bbox.copy()
        angle = np.deg2rad(rng.uniform(-self.max_rotation_degrees, self.max_rotation_degrees))
        scale = 1.0 + rng.uniform(-self.max_scale, self.max_scale)
        centre = BOX_SCALE / 2
        # rotate and scale the four corners of each box, then take their bounding box
        xs = boxes[words][:, [0, 2, 2, 0]] - centre
        ys = boxes[words][:, [1, 1, 3, 3]] - centre
        cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
        rx, ry = xs * cos - ys * sin + centre, xs * sin + ys * cos + centre
        moved = np.column_stack([rx.min(axis=1), ry.min(axis=1), rx.max(axis=1), ry.max(axis=1)])
        moved += rng.uniform(-self.max_jitter, self.max_jitter, size=moved.shape)
        moved = np.clip(np.rint(moved), 0, BOX_SCALE)
        lower = np.minimum(moved[:, :2], moved[:, 2:])
        upper = np.maximum(moved[:, :2], moved[:, 2:])
        result = bbox.copy()
        result[words] = np.column_stack([lower, upper]).astype(bbox.dtype)
        return result
