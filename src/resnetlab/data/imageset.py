"""The object every data source produces and every consumer reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from resnetlab.errors import DataError


@dataclass
class ImageSet:
    """A decoded image dataset held in memory, or (``images`` None) the files of one on disk.

    images: uint8 tensor (N, H, W, 3), RGB, every image the same size; None for a *files-only*
        set (the photo path's stream/memory modes read ``source``/``paths`` themselves, so the
        folder is never decoded to one fixed size): then ``paths`` is required, and anything that
        needs pixels decodes them first (``photo.eval_imageset``) or fails.
    labels: int64 tensor (N,), indices into ``classes``.
    classes: class names in label order.
    mean/std: per-channel statistics in [0, 1] used for normalization (of the *training* data;
        splits carved from train inherit them so val/test are normalized the same way).
    source: a human-readable description of where the data came from.
    """

    images: torch.Tensor | None
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    source: str = ""
    paths: list[str] | None = field(default=None, repr=False)  # per-image origin, when known

    def __post_init__(self) -> None:
        if self.images is None:
            if self.paths is None or len(self.paths) != len(self.labels):
                raise ValueError("a files-only ImageSet (images=None) needs one path per label")
            return
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"ImageSet.images must be uint8 (N, H, W, 3), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("ImageSet.labels must have one label per image")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def files_only(self) -> bool:
        """True when no pixels are held (the images are files under ``source``)."""
        return self.images is None

    @property
    def image_size(self) -> tuple[int, int]:
        if self.images is None:  # the files have their own sizes; the caller must choose one
            raise DataError(f"{self.source or 'this data'}: images of many sizes are read from their files; "
                            "pass image_size / --image-size")
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: torch.Tensor) -> "ImageSet":
        """A new ImageSet with the given rows; keeps classes and normalization."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        paths = [self.paths[i] for i in indices.tolist()] if self.paths is not None else None
        return ImageSet(
            images=self.images[indices] if self.images is not None else None,
            labels=self.labels[indices],
            classes=list(self.classes),
            mean=self.mean,
            std=self.std,
            source=self.source,
            paths=paths,
        )


@dataclass
class DataSplits:
    """Train/val/test ImageSets of one dataset. ``test`` is only ever used for the final report."""

    train: ImageSet
    val: ImageSet | None
    test: ImageSet | None
    name: str = ""

    @property
    def classes(self) -> list[str]:
        return self.train.classes
