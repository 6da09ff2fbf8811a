# syntax=docker/dockerfile:1
# The classifier image: functions-framework serving function/main.py:classify.
# Build with scripts/build-image IMAGE [--preload]; the steps live in scripts/image/
# (tested outside Docker by tests/test_image_steps.py). See docs/deploy.md.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
COPY scripts/image/ scripts/image/
# The locks alone first: this large layer is reused until a lock changes.
COPY requirements/serving.txt requirements/runtime.txt requirements/
RUN scripts/image/install /opt/venv -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY function/ function/
RUN scripts/image/install /opt/venv .
# PRELOAD_MODEL=1 bakes the model into the image: bigger image, faster cold start.
ARG PRELOAD_MODEL=0
RUN TFHUB_CACHE_DIR=/models/tfhub scripts/image/preload /opt/venv "$PRELOAD_MODEL"

FROM ${PYTHON_IMAGE}
# functions-framework's server settings. knative/service.yaml repeats them
# (containerConcurrency = WORKERS x THREADS, timeoutSeconds >= CLOUD_RUN_TIMEOUT_SECONDS, port = PORT);
# tests/test_manifests.py fails when they disagree.
ENV PORT=8080 \
    WORKERS=1 \
    THREADS=8 \
    CLASSIFIER_LITERT_THREADS=2 \
    CLOUD_RUN_TIMEOUT_SECONDS=300 \
    TFHUB_CACHE_DIR=/models/tfhub \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent app
COPY --from=builder /opt/venv /opt/venv
# Owned by the app user: without a baked model, the first request downloads into it.
COPY --from=builder --chown=10001:10001 /models /models
WORKDIR /app
COPY function/ function/
USER 10001
EXPOSE 8080
# CMD, not ENTRYPOINT: `docker run IMAGE classify URL...` runs the CLI instead.
CMD ["functions-framework", "--target", "classify", "--source", "function/main.py"]
