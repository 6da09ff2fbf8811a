# syntax=docker/dockerfile:1
# The classifier image: `python -m function.server` (functions-framework's app for function/main.py:classify
# under gunicorn with our request limits, function/server.py).
# Two targets (docs/deploy.md):
#   lean (default, the last stage): serves the models baked at build time as .tflite on
#       LiteRT; no TensorFlow, tf-keras or tensorflow-hub in it.
#   full (--target full): + TensorFlow, for CLASSIFIER_RUNTIME=tensorflow and Hub models
#       chosen after the build.
# Build with scripts/build-image IMAGE [--preload] [--target full]; the steps live in
# scripts/image/ (tested outside a container engine by tests/test_image_steps.py; the whole
# lean build, run as its user, by tests/test_image_build.py).
ARG PYTHON_IMAGE=python:3.11-slim
# The default model, baked and configured: build args and the image's ENV defaults.
ARG CLASSIFIER_MODEL_URL=https://tfhub.dev/google/aiy/vision/classifier/birds_V1/1
ARG CLASSIFIER_LABELS_URL=https://www.gstatic.com/aihub/tfhub/labelmaps/aiy_birds_V1_labelmap.csv
# More models (inline JSON, README "Several models"): baked and configured too.
ARG CLASSIFIER_MODELS=""

# --- the venvs: /opt/venv, installed with --no-deps from the locks -----------------------
# The secret `ca-bundle` (optional) is a CA bundle for pip and the model download, for
# builds behind a TLS-inspecting proxy; as a secret it never lands in a layer.
FROM ${PYTHON_IMAGE} AS serving-deps
WORKDIR /src
COPY scripts/image/ scripts/image/
# The locks alone first: these large layers are reused until a lock changes.
COPY requirements/serving.txt requirements/
RUN --mount=type=secret,id=ca-bundle scripts/image/install /opt/venv -r requirements/serving.txt

FROM serving-deps AS tensorflow-deps
COPY requirements/runtime.txt requirements/
RUN --mount=type=secret,id=ca-bundle scripts/image/install /opt/venv -r requirements/runtime.txt

# The lean venv: what serving needs (requirements/serving.txt) and the project.
FROM serving-deps AS serving
COPY pyproject.toml README.md ./
COPY function/ function/
RUN --mount=type=secret,id=ca-bundle scripts/image/install /opt/venv .

# The full venv: the same plus TensorFlow and TF Hub (requirements/runtime.txt).
FROM tensorflow-deps AS tensorflow
COPY pyproject.toml README.md ./
COPY function/ function/
RUN --mount=type=secret,id=ca-bundle scripts/image/install /opt/venv .

# --- the models: the app's own `classify --preload`, every configured model ---------------
FROM tensorflow AS models
ARG CLASSIFIER_MODEL_URL
ARG CLASSIFIER_LABELS_URL
ARG CLASSIFIER_MODELS
# 1 bakes the models (the lean image's default). 0 leaves them to the first request:
# for the full image, or a lean image whose models are .tflite URLs.
ARG PRELOAD_MODEL=1
RUN --mount=type=secret,id=ca-bundle TFHUB_CACHE_DIR=/models/tfhub \
    scripts/image/preload /opt/venv "$PRELOAD_MODEL"
# What the lean image reads: the .tflite files and label maps, without TF Hub's downloads.
RUN scripts/image/lean-models /models/tfhub /lean-models/tfhub

# --- what both images run: the server contract, the app, its user ------------------------
FROM ${PYTHON_IMAGE} AS app
# functions-framework's server settings. knative/service.yaml repeats them
# (containerConcurrency = WORKERS x THREADS, timeoutSeconds >= CLOUD_RUN_TIMEOUT_SECONDS, port = PORT);
# tests/test_manifests.py fails when they disagree. XDG_RUNTIME_DIR: gunicorn's control
# socket goes to /tmp (an emptyDir in the Service), not to the read-only root filesystem.
ENV PORT=8080 \
    WORKERS=1 \
    THREADS=8 \
    CLASSIFIER_LITERT_THREADS=2 \
    CLOUD_RUN_TIMEOUT_SECONDS=300 \
    TFHUB_CACHE_DIR=/models/tfhub \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    XDG_RUNTIME_DIR=/tmp
WORKDIR /app
COPY function/ function/
ARG CLASSIFIER_MODEL_URL
ARG CLASSIFIER_LABELS_URL
ARG CLASSIFIER_MODELS
ENV CLASSIFIER_MODEL_URL=${CLASSIFIER_MODEL_URL} \
    CLASSIFIER_LABELS_URL=${CLASSIFIER_LABELS_URL} \
    CLASSIFIER_MODELS=${CLASSIFIER_MODELS}
# A RUN after that ENV, on purpose: buildah's layer cache reuses an ENV step whatever value its
# build arg has unless a RUN follows (containers/buildah#5575), and would ship the last model's.
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent app
USER 10001
EXPOSE 8080
# CMD, not ENTRYPOINT: `docker run IMAGE classify URL...` runs the CLI instead.
CMD ["python", "-m", "function.server"]

# --- full: TensorFlow inside; the model cache writable by the app user -------------------
FROM app AS full
COPY --from=tensorflow /opt/venv /opt/venv
# Owned by the app user: without a baked model, the first request downloads into it.
COPY --from=models --chown=10001:10001 /models /models

# --- lean (the default target): no TensorFlow; the baked .tflite models -------------------
FROM app AS lean
COPY --from=serving /opt/venv /opt/venv
COPY --from=models --chown=10001:10001 /lean-models /models
