# Tessera model server and batch runner (docs/deploy.md).
#
#   docker build --network host -t tessera .
#   docker run --gpus all -p 3000:3000 tessera          # GPU host (NVIDIA Container Toolkit)
#   docker run -p 3000:3000 tessera                     # CPU host: the same image
#   docker run -p 3000:3000 -v /srv/models:/models:ro \
#       -e TESSERA_BUNDLE=/models/cells.safetensors tessera     # another model
#   docker run --user "$(id -u):$(id -g)" -v "$PWD:/data" tessera \
#       tessera batch default /data/in /data/out        # a batch job, same image
#
# The PyPI torch wheels bundle CUDA, so one image serves on a GPU when the container is given one
# and on the CPU otherwise. The dependency layers come from pyproject.toml's pins and are cached
# apart from the source: editing code rebuilds only the last small layers.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- the pinned requirement lists, extracted from pyproject.toml --------------------------------
# Only these generated lists (not pyproject.toml itself) reach the install layers, so a change to
# the version, the test extras or tool settings does not invalidate the multi-gigabyte torch layer.
FROM ${PYTHON_IMAGE} AS requirements
WORKDIR /build
COPY pyproject.toml scripts/pinned-requirements ./
RUN python pinned-requirements pyproject.toml --only torch torchvision numpy pillow > torch.txt \
    && python pinned-requirements pyproject.toml --extra docker --extra export > requirements.txt

# ---- the image -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="tessera" \
      org.opencontainers.image.description="U-Net image segmentation server (BentoML) and batch runner" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

# torch + torchvision first, in their own layer: by far the largest download (CUDA libraries).
# numpy and pillow (torchvision's dependencies) come in at their pinned versions here too.
COPY --from=requirements /build/torch.txt /tmp/requirements/torch.txt
RUN pip install --no-cache-dir -r /tmp/requirements/torch.txt

# Every other pinned dependency (torch is already satisfied), plus the docker extra (dumb-init) and the export extra (ONNX Runtime: `tessera serve model.onnx`).
COPY --from=requirements /build/requirements.txt /tmp/requirements/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements/requirements.txt

# A non-root user. Its home and BENTOML_HOME are group 0 and group-writable, so the image also runs
# under an arbitrary uid (OpenShift, or `docker run --user UID:0`).
ENV HOME=/home/tessera \
    BENTOML_HOME=/home/tessera/bentoml \
    BENTOML_DO_NOT_TRACK=True \
    MPLCONFIGDIR=/tmp/matplotlib
RUN useradd --uid 10001 --gid 0 --no-log-init --create-home --home-dir /home/tessera \
        --shell /usr/sbin/nologin tessera \
    && mkdir -p /home/tessera/bentoml /home/tessera/work \
    && chown -R tessera:0 /home/tessera \
    && chmod -R g=u /home/tessera

# The project itself (no dependencies: all installed above), including the shipped default model
# training/assets/default.safetensors. The build fails here if that model is missing or unreadable.
COPY pyproject.toml README.md /tmp/src/
COPY training /tmp/src/training
COPY service /tmp/src/service
RUN pip install --no-cache-dir --no-deps /tmp/src \
    && rm -rf /tmp/src \
    && python -c "from training.bundle import DEFAULT_BUNDLE, read_bundle_info; read_bundle_info(DEFAULT_BUNDLE); print('default model:', DEFAULT_BUNDLE)"

USER 10001
WORKDIR /home/tessera/work

EXPOSE 3000

# /readyz answers 200 only once a worker has loaded the model; urllib raises on anything else.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=4)"]

# dumb-init as PID 1 forwards SIGTERM (docker stop) to the server and reaps its worker processes.
ENTRYPOINT ["dumb-init", "--"]
CMD ["tessera", "serve", "--host", "0.0.0.0", "--port", "3000"]
