# defectdet container image: multi-stage, non-root, no network access needed at run time.
#
#   CPU image (default; any machine):
#     docker build -t defectdet .
#   Small CPU-only image (PyTorch's CPU wheel index, no CUDA libraries, a fraction of the size):
#     docker build -t defectdet:cpu --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#   CUDA image (run with --gpus all; needs only the NVIDIA driver + container toolkit on the host):
#     docker build -t defectdet:cuda --build-arg VARIANT=cuda .
#
# The image holds defectdet with its `onnx` extra (onnx, onnxruntime), so a model exported with
# `defectdet export` can be checked and run in it (`predict/evaluate --backend onnxruntime`).
#
# See docs/docker.md for running it. Build arguments:
#   BASE_IMAGE       Python 3.11 base for both stages (default python:3.11-slim). It must provide
#                    `python3` with the venv module; both stages use the same one, because the
#                    venv copied into the final stage points at the base's interpreter.
#   VARIANT          cpu (default) | cuda. The PyPI torch wheels for Linux x86_64 already bundle the
#                    CUDA runtime (nvidia-* wheels), so the CUDA image needs no nvidia/cuda base and
#                    the same slim base serves both. VARIANT=cuda checks at build time that torch is a
#                    CUDA build (and refuses a CPU-only TORCH_INDEX_URL); the variant is recorded in
#                    the image (label, DEFECTDET_IMAGE_VARIANT). A plain build from PyPI therefore
#                    also carries the CUDA libraries: use TORCH_INDEX_URL=.../whl/cpu for a small
#                    CPU-only image.
#   TORCH_INDEX_URL  Optional PyTorch wheel index for torch/torchvision only (e.g.
#                    https://download.pytorch.org/whl/cpu or .../whl/cu126). Empty (default): torch
#                    resolves from the configured index like every other dependency. The versions
#                    always come from constraints.txt; the CPU index's `2.14.1+cpu` satisfies the pin
#                    `torch==2.14.1` (PEP 440: a local label is ignored when the specifier has none).

ARG BASE_IMAGE=python:3.11-slim
ARG VARIANT=cpu

# --------------------------------------------------------------------------------------- deps
# The dependencies alone (those of the package and of its `onnx` extra), in /opt/venv: the heavy
# layer (torch), rebuilt only when pyproject.toml or constraints.txt change, and copied into the
# final image as one layer that editing the source does not touch.
FROM ${BASE_IMAGE} AS deps
ARG VARIANT
ARG TORCH_INDEX_URL=""
# No PIP_INDEX_URL here on purpose: pip uses plain PyPI, or the pip configuration the build host
# lends to builds (e.g. an /etc/pip.conf that the container engine mounts into every RUN).
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
WORKDIR /src

# With TORCH_INDEX_URL, torch/torchvision come from that index first, at the versions pinned in
# constraints.txt (one source of truth) and with --no-deps: their own dependencies (filelock,
# sympy, ...) come in the next command from the normal index, pinned by constraints.txt. An
# installed torch 2.14.1+cpu satisfies the constraint torch==2.14.1, so pip keeps it.
COPY pyproject.toml constraints.txt /src/
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    set -eu; \
    case "$VARIANT" in cpu|cuda) ;; *) echo "VARIANT must be cpu or cuda, got '$VARIANT'" >&2; exit 1;; esac; \
    if [ "$VARIANT" = cuda ] && echo "$TORCH_INDEX_URL" | grep -q '/cpu/*$'; then \
        echo "VARIANT=cuda with a CPU-only TORCH_INDEX_URL ($TORCH_INDEX_URL) cannot work" >&2; exit 1; \
    fi; \
    if [ -n "$TORCH_INDEX_URL" ]; then \
        torch_pin=$(grep -E '^torch==' constraints.txt || true); \
        vision_pin=$(grep -E '^torchvision==' constraints.txt || true); \
        if [ -z "$torch_pin" ] || [ -z "$vision_pin" ]; then echo "torch/torchvision pins missing from constraints.txt" >&2; exit 1; fi; \
        echo "torch from $TORCH_INDEX_URL: $torch_pin $vision_pin"; \
        pip install --no-deps --index-url "$TORCH_INDEX_URL" "$torch_pin" "$vision_pin"; \
    fi; \
    python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; d = p['dependencies'] + p['optional-dependencies']['onnx']; open('/tmp/requirements.txt', 'w').write(chr(10).join(d) + chr(10))"; \
    pip install -c constraints.txt -r /tmp/requirements.txt; \
    python3 -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__)"; \
    python3 -c "import onnx, onnxruntime; print('onnx', onnx.__version__, 'onnxruntime', onnxruntime.__version__)"; \
    if [ "$VARIANT" = cuda ]; then \
        python3 -c "import sys, torch; sys.exit('VARIANT=cuda but torch is a CPU-only build' if torch.version.cuda is None else 0)"; \
    fi

# --------------------------------------------------------------------------------------- package
# The package itself as a wheel (non-editable), installed here once, with its `onnx` extra, to
# check that it resolves against the pinned dependencies and starts.
FROM deps AS package
COPY . /src
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    set -eu; \
    pip wheel --no-deps --wheel-dir /wheels . ; \
    whl=$(echo /wheels/*.whl); \
    pip install -c constraints.txt "${whl}[onnx]" ; \
    pip check; \
    defectdet --version

# --------------------------------------------------------------------------------------- runtime
# (One runtime stage for both variants: picking a stage with `FROM runtime-${VARIANT}` breaks on
# podman/buildah < 1.29, e.g. Debian bookworm's podman 4.3.)
FROM ${BASE_IMAGE} AS runtime
ARG VARIANT
# The pip wheels bundle their native libraries (torch its libgomp, opencv-python-headless its own
# codecs and no GUI/GL libraries, scikit-learn its libgomp; onnx and onnxruntime need only glibc,
# libstdc++ and libgcc_s): `ldd` over every .so in the venv finds nothing missing on
# python:3.11-slim, so no system packages are installed.
# User defectdet (uid/gid 1000); any other uid given with --user works as well.
RUN set -eu; \
    (getent group 1000 >/dev/null || groupadd -g 1000 defectdet); \
    (getent passwd 1000 >/dev/null || useradd -u 1000 -g 1000 -m -d /home/defectdet -s /usr/sbin/nologin defectdet); \
    mkdir -p /data /runs /opt/torch-cache /tmp/mpl; \
    chown 1000:1000 /runs /opt/torch-cache; \
    chmod 1777 /tmp/mpl
COPY --from=deps /opt/venv /opt/venv
# the small layer that changes with the source; its dependencies are all in the layer above
COPY --from=package /wheels /tmp/wheels
RUN /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && /opt/venv/bin/defectdet --version
# No NVIDIA_VISIBLE_DEVICES: GPUs are exposed only when asked for (docker --gpus all, podman
# --device nvidia.com/gpu=all), which also sets what the NVIDIA container toolkit needs.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/mpl \
    TORCH_HOME=/opt/torch-cache \
    DEFECTDET_IMAGE_VARIANT=${VARIANT}
LABEL org.opencontainers.image.title="defectdet" \
      org.opencontainers.image.description="defectdet CLI: RetinaNet defect detection (${VARIANT} image)" \
      org.opencontainers.image.licenses="Apache-2.0"
WORKDIR /runs
VOLUME ["/data", "/runs"]
USER 1000:1000
ENTRYPOINT ["defectdet"]
CMD ["--help"]
