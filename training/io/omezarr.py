"""OME-Zarr label images (zarr v3, NGFF 0.5): the output of gigapixel jobs and of slides.

* ``0``, ``1``, ... -- the label map and its pyramid, each level half the previous one (nearest
  sample: class indices are never averaged), down to one chunk; axes ``y, x``; ``image-label``
  metadata names the classes and their colours;
* ``probabilities/0``, ``probabilities/1``, ... -- ``(K, H, W)`` uint8 ``round(255 p)``, axes
  ``c, y, x``, same pyramid rule;
* optionally the full-resolution labels as a tiled BigTIFF, streamed in row bands.

:class:`LabelImageSink` writes one tile by tile (``tessera predict`` on a slide into ``.zarr``);
gigapixel jobs fill the ``0`` array chunk by chunk and call :func:`write_label_image` at the end.

zarr, dask and ome-zarr are imported where they are used: ``tessera --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.io.overlay import PALETTE
from training.io.physical import level_datasets, space_axes
from training.io.writers import FileSink, open_sink, temporary_path

#: The probabilities image inside the output.
PROBABILITIES = "probabilities"
#: OME-NGFF channel axis of the probability image (the space axes: :func:`training.io.physical.space_axes`).
CHANNEL_AXIS = {"name": "c", "type": "channel"}


def pyramid_levels(height: int, width: int, chunks: tuple[int, int]) -> list[tuple[int, int]]:
    """Shapes of the pyramid levels: halved (rounding up) until one chunk holds the level."""
    levels = [(height, width)]
    while levels[-1][0] > chunks[0] or levels[-1][1] > chunks[1]:
        h, w = levels[-1]
        levels.append((-(-h // 2), -(-w // 2)))
    return levels


def build_pyramid(group, chunks: tuple[int, int], client) -> int:
    """Write levels ``1..n`` of ``group`` from level ``0``, each the previous one's every other
    pixel (nearest: exact for class indices), through dask (on the cluster if there is one)."""
    import dask.array as da  # noqa: PLC0415  OME-Zarr outputs only

    base = group["0"]
    shape = base.shape[-2:]
    levels = pyramid_levels(*shape, chunks)
    lead = base.shape[:-2]
    for level in range(1, len(levels)):
        previous = da.from_zarr(group[str(level - 1)])
        halved = previous[..., ::2, ::2].rechunk((*lead, *chunks))
        target = group.create_array(str(level), shape=(*lead, *levels[level]), chunks=(*lead, *chunks), dtype=base.dtype,
                                    fill_value=0, dimension_names=base.metadata.dimension_names, overwrite=True)
        if client is None:
            da.store(halved, target, lock=False, scheduler="synchronous")
        else:
            client.compute(da.store(halved, target, lock=False, compute=False)).result()
    return len(levels)


def write_metadata(group, name: str, levels: int, lead_axes: list[dict], mpp: float | None = None) -> None:
    """OME-NGFF 0.5 multiscales metadata through ome-zarr: ``lead_axes`` then ``y, x`` (in
    micrometres with scale ``mpp * 2**level`` when ``mpp`` is known, else scale ``2**level``)."""
    from ome_zarr.format import FormatV05  # noqa: PLC0415  OME-Zarr outputs only (~0.9 s)
    from ome_zarr.writer import write_multiscales_metadata  # noqa: PLC0415  OME-Zarr outputs only (~0.9 s)

    datasets = level_datasets(levels, mpp, lead_axes=len(lead_axes))
    write_multiscales_metadata(group, datasets, fmt=FormatV05(), axes=[*lead_axes, *space_axes(mpp)], name=name)


def write_label_image(group, name: str, chunks: tuple[int, int], classes: list[str], probabilities: bool,
                      attributes: dict, client, mpp: float | None = None) -> int:
    """Turn a group holding the full-resolution labels (and probabilities) into the OME-Zarr label
    image: pyramids, multiscales (physical pixel size ``mpp`` µm when known) and ``image-label``
    metadata, ``attributes`` under ``tessera``. Returns the number of pyramid levels."""
    from ome_zarr.format import FormatV05  # noqa: PLC0415  OME-Zarr outputs only (~0.9 s)
    from ome_zarr.writer import add_metadata  # noqa: PLC0415  OME-Zarr outputs only (~0.9 s)

    levels = build_pyramid(group, chunks, client)
    write_metadata(group, name, levels, [], mpp)
    add_metadata(group, {"image-label": {
        "version": FormatV05().version,
        "colors": [{"label-value": i, "rgba": [*map(int, PALETTE[i % len(PALETTE)]), 255]} for i in range(1, len(classes))],
        "properties": [{"label-value": i, "class": label} for i, label in enumerate(classes)],
    }}, fmt=FormatV05())
    group.attrs["tessera"] = attributes
    if probabilities:
        build_pyramid(group[PROBABILITIES], chunks, client)
        write_metadata(group[PROBABILITIES], PROBABILITIES, levels, [CHANNEL_AXIS], mpp)
    return levels


def write_tiff(store: Path, path: Path, rows: int) -> None:
    """Stream the full-resolution labels of an OME-Zarr into a tiled BigTIFF, ``rows`` at a time."""
    import zarr  # noqa: PLC0415  OME-Zarr outputs only

    labels = zarr.open_array(str(store / "0"), mode="r")
    height, width = labels.shape
    with open_sink(path, (height, width), labels.dtype) as sink:
        for y0 in range(0, height, rows):
            y1 = min(y0 + rows, height)
            sink.write((y0, y1, 0, width), np.asarray(labels[y0:y1, :]))


def create_label_group(path: Path, shape: tuple[int, int], chunks: tuple[int, int], dtype: np.dtype):
    """A zarr v3 group at ``path`` holding the empty full-resolution label array ``0``."""
    import zarr  # noqa: PLC0415  OME-Zarr outputs only

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0, dimension_names=("y", "x"))
    return group


class LabelImageSink(FileSink):
    """Labels written tile by tile into the ``0`` array of an OME-Zarr label image at a temporary
    path; on commit the pyramid and metadata (:func:`write_label_image`, in micrometres when
    ``mpp`` is known), then the rename into place."""

    def __init__(self, path: Path, shape: tuple[int, int], dtype: np.dtype, chunks: tuple[int, int],
                 classes: list[str], attributes: dict, mpp: float | None) -> None:
        temporary = temporary_path(path)
        self.group = create_label_group(temporary, shape, chunks, dtype)
        super().__init__(self.group["0"], temporary, path)
        self.chunks, self.classes, self.attributes, self.mpp = chunks, classes, attributes, mpp

    def commit(self) -> None:
        name = self.path.name.split(".")[0]
        write_label_image(self.group, name, self.chunks, self.classes, False, self.attributes, None, self.mpp)
        self.group = None
        super().commit()
