"""Label conventions shared by datasets, patches, weight maps, losses and metrics.

Targets are int64 ``(H, W)`` class indices ``0 .. K-1``; pixels that are neither trained nor scored
hold :data:`IGNORE_INDEX` (PyTorch's ``cross_entropy`` default), whatever value marked them in the
mask files.
"""

#: Class index of pixels that are neither trained nor scored.
IGNORE_INDEX = -100
