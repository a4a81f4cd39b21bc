# GraphPilot: one CUDA-capable image, three entrypoints (one per container of the system):
#   graphpilot-runtime serve ...   the inference runtime (GPU pods)
#   graphpilot-sidecar             the autotuner sidecar (same pods)
#   graphpilot-operator run        the operator (needs no GPU and never imports torch)
# Build: docker build -t graphpilot:0.1.0 .
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/tmp/hf

# Dependencies first (torch comes with the base image), pinned, in their own layer.
RUN pip install \
      "safetensors==0.8.0" \
      "tokenizers==0.23.3" \
      "numpy==2.4.6" \
      "fastapi==0.165.0" \
      "uvicorn==0.54.0" \
      "pydantic==2.14.4" \
      "pydantic-settings==2.16.3" \
      "prometheus-client==0.26.0" \
      "httpx==0.28.1" \
      "kopf==1.45.2" \
      "pyyaml==6.0.4" \
      "huggingface-hub==2.4.0"

WORKDIR /opt/graphpilot
COPY pyproject.toml README.md ./
COPY runtime ./runtime
COPY sidecar ./sidecar
COPY operator ./operator
RUN pip install --no-deps . && rm -rf /opt/graphpilot/build

RUN groupadd --gid 10001 graphpilot && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin graphpilot
USER 10001:10001
WORKDIR /tmp

EXPOSE 8000 8080
CMD ["graphpilot-runtime", "serve", "--help"]
