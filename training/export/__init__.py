"""Export of bundles for other runtimes, the bundle's metadata kept with the graph.

* :mod:`.program`: ``torch.export`` capture (dynamic batch and sizes) and ``.pt2`` files;
* :mod:`.onnx`: ONNX files (``metadata_props`` hold the bundle's metadata);
* :mod:`.triton`: a Triton Inference Server model repository around the ONNX file;
* :mod:`.metadata`: the metadata documents and the input-size rule.

The exported files run through the same predictor as bundles (:mod:`training.inference.backends`).
"""
