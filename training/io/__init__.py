"""Image I/O: the decoding policy, lazy readers, chunked writers (sinks) and overlays."""
