"""Helpers shared by the tests and the benchmarks (no tests, no fixtures).

- :mod:`tests.support.paths`: the repository's folders and the ISBI 2012 slices shipped in
  ``training/assets``.
- :mod:`tests.support.images`: synthetic images and ISBI slice loading.
- :mod:`tests.support.bundles`: the one tiny-bundle factory and the small model specs.
- :mod:`tests.support.exact`: the tiled == whole-image comparison.
- :mod:`tests.support.server`: a real ``tessera serve`` process, started and always stopped.
- :mod:`tests.support.batch`: image folders, slides and output trees for the batch jobs.

Fixtures live in the ``conftest.py`` of the folder whose tests share them.
"""
