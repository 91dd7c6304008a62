"""``tessera serve``: the HTTP prediction API (BentoML) for one model bundle.

Starts ``bentoml serve service.http.app:Tessera`` with the bundle in ``$TESSERA_BUNDLE`` and the
inference options in ``$TESSERA_OPTIONS``; the model is loaded once per worker. ``/readyz``
answers 200 once it is loaded. Requests may ask for another tile size, TTA or threshold. Limits
come from ``TESSERA_MAX_UPLOAD_BYTES`` and ``TESSERA_MAX_PIXELS`` (or the options below).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from service.commands.inference import add_predictor_options, inference_options

EXAMPLES = """\
examples:
  tessera serve                                  the shipped model on http://127.0.0.1:3000
  tessera serve model.safetensors --port 8080 --workers 2
  tessera serve groupnorm.safetensors --blend gaussian --device cuda:1
  curl -F image=@slice.png http://127.0.0.1:3000/segment -o mask.png
  curl -F image=@slice.png 'http://127.0.0.1:3000/segment?output=json&geometry=geojson'
"""

#: The BentoML service the command serves.
SERVICE = "service.http.app:Tessera"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP (BentoML)",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bundle", nargs="?", help="model bundle (.safetensors); default: the shipped model")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 in containers)")
    parser.add_argument("--port", type=int, default=3000, help="port (default 3000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes, each with its own model (default 1)")
    parser.add_argument("--max-upload-bytes", type=int, help="refuse request bodies larger than this (413)")
    parser.add_argument("--max-pixels", type=int, help="refuse images with more pixels than this (413)")
    add_predictor_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from training.bundle import read_bundle_info

    env = dict(os.environ)
    env["TESSERA_OPTIONS"] = json.dumps(inference_options(args).to_dict())
    if args.bundle:
        bundle = Path(args.bundle).resolve()
        read_bundle_info(bundle)  # a bad bundle fails here, with its name, not in a worker
        env["TESSERA_BUNDLE"] = str(bundle)
    env["TESSERA_WORKERS"] = str(args.workers)
    if args.max_upload_bytes:
        env["TESSERA_MAX_UPLOAD_BYTES"] = str(args.max_upload_bytes)
    if args.max_pixels:
        env["TESSERA_MAX_PIXELS"] = str(args.max_pixels)
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    command = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", args.host, "--port", str(args.port)]
    os.execvpe(command[0], command, env)
    return 0  # not reached
