"""Real slide files for tests: Aperio SVS and pyramidal OME-TIFF written with tifffile."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import tifffile

WHITE = 242


def tissue_image(height: int, width: int, seed: int = 0, share: float = 0.3) -> np.ndarray:
    """An RGB image: a pink textured disc (about ``share`` of the area) on near-white glass."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), WHITE, np.uint8)
    noise = rng.integers(0, 90, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    texture = cv2.resize(noise, (width // 8 * 8 + 16, height // 8 * 8 + 16), interpolation=cv2.INTER_LINEAR)[:height, :width]
    yy, xx = np.ogrid[0:height, 0:width]
    radius = np.sqrt(share * height * width / np.pi)
    disc = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < radius**2
    pink = np.array([200, 110, 160], np.int16)
    image[disc] = np.clip(pink + texture[disc].astype(np.int16) - 45, 0, 255).astype(np.uint8)
    return image


def pyramid(image: np.ndarray, levels: int, step: int = 4) -> list[np.ndarray]:
    """``levels`` images, each ``step`` times smaller than the one before (area interpolation)."""
    out = [image]
    for _ in range(levels - 1):
        last = out[-1]
        out.append(cv2.resize(last, (last.shape[1] // step, last.shape[0] // step), interpolation=cv2.INTER_AREA))
    return out


def write_svs(path: Path, image: np.ndarray, mpp: float = 0.5, magnification: int = 20, levels: int = 3,
              tile: int = 256, quality: int = 95) -> Path:
    """An Aperio SVS: JPEG-tiled levels, a stripped thumbnail as the second page, Aperio descriptions."""
    height, width = image.shape[:2]
    images = pyramid(image, levels)
    head = "Aperio Image Library v12.0.15\r\n"
    with tifffile.TiffWriter(path) as writer:
        description = f"{head}{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) JPEG/RGB Q={quality}|AppMag = {magnification}|MPP = {mpp}"
        writer.write(images[0], tile=(tile, tile), compression="jpeg", compressionargs={"level": quality}, description=description, metadata=None)
        thumb = images[-1][::2, ::2]
        writer.write(thumb, compression="jpeg", rowsperstrip=16, metadata=None,
                     description=f"{head}{width}x{height} -> {thumb.shape[1]}x{thumb.shape[0]} - ")
        for level in images[1:]:
            writer.write(level, tile=(tile, tile), compression="jpeg", compressionargs={"level": quality}, metadata=None,
                         description=f"{head}{width}x{height} -> {level.shape[1]}x{level.shape[0]} - |AppMag = {magnification}|MPP = {mpp}")
    return path


def write_ome_tiff(path: Path, image: np.ndarray, mpp: float = 0.25, levels: int = 3, tile: int = 256,
                   unit: str = "µm", compression: str | None = "jpeg") -> Path:
    """A pyramidal OME-TIFF (levels in SubIFDs) with physical pixel sizes."""
    images = pyramid(image, levels)
    metadata = {"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeXUnit": unit, "PhysicalSizeY": mpp, "PhysicalSizeYUnit": unit}
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        writer.write(images[0], subifds=levels - 1, tile=(tile, tile), compression=compression, metadata=metadata)
        for level in images[1:]:
            writer.write(level, subfiletype=1, tile=(tile, tile), compression=compression)
    return path
