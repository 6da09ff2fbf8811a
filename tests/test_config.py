"""Settings from an injected environment: the model registry and the upload limit."""

from __future__ import annotations

import json

import pytest

from function.config import ConfigError, ModelSpec, load_settings, model_specs

FLOWERS = {"url": "https://models.example/flowers.tflite", "labels": "/models/flowers.csv",
           "input_size": [180, 160], "input_range": [0, 255], "output": "logits"}


def test_registry_inline_json_keeps_the_birds_first():
    settings = load_settings({"CLASSIFIER_MODELS": json.dumps({"flowers": FLOWERS, "tiny": {"url": "t", "labels": "l"}})})
    specs = model_specs(settings)
    assert [s.name for s in specs] == ["birds", "flowers", "tiny"]
    assert specs[1] == ModelSpec("flowers", FLOWERS["url"], FLOWERS["labels"], (180, 160), 255.0, "logits")
    assert specs[2] == ModelSpec("tiny", "t", "l", (224, 224), 1.0, "probabilities")  # the defaults


def test_registry_from_a_file_and_square_sizes(tmp_path):
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"flowers": {**FLOWERS, "input_size": 180}}))
    (spec,) = load_settings({"CLASSIFIER_MODELS": str(path)}).models
    assert json.dumps(spec.describe()["input_range"]) == "[0, 255]"  # as the registry spells it
    assert spec.input_size == (180, 180)
    assert spec.describe() == {"name": "flowers", "url": FLOWERS["url"], "labels": FLOWERS["labels"],
                               "input_size": [180, 180], "input_range": [0, 255], "output": "logits"}


@pytest.mark.parametrize(
    "raw, message",
    [
        ("/no/such/models.json", "cannot read the registry file"),
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ("{}", "must be a JSON object"),
        (json.dumps({"birds": FLOWERS}), "model 'birds': is the default model"),
        (json.dumps({"Big Name": FLOWERS}), "model 'Big Name': names are"),
        (json.dumps({"f": "https://x/f.tflite"}), "model 'f': must be an object"),
        (json.dumps({"f": {**FLOWERS, "size": 3}}), "model 'f': unknown field 'size'"),
        (json.dumps({"f": {"url": "u"}}), "model 'f': 'labels' must be a URL or path"),
        (json.dumps({"f": {**FLOWERS, "url": " "}}), "model 'f': 'url' must be a URL or path"),
        (json.dumps({"f": {**FLOWERS, "input_size": [180]}}), "'input_size' must be"),
        (json.dumps({"f": {**FLOWERS, "input_size": 0}}), "'input_size' must be"),
        (json.dumps({"f": {**FLOWERS, "input_size": [True, 3]}}), "'input_size' must be"),
        (json.dumps({"f": {**FLOWERS, "input_range": [0, 2]}}), "'input_range' must be [0, 1] or [0, 255]"),
        (json.dumps({"f": {**FLOWERS, "input_range": [-1, 1]}}), "'input_range' must be"),
        (json.dumps({"f": {**FLOWERS, "output": "softmax"}}), "'output' must be one of probabilities, logits"),
    ],
)
def test_bad_registries_name_the_key_model_and_field(raw, message):
    with pytest.raises(ConfigError) as error:
        load_settings({"CLASSIFIER_MODELS": raw})
    assert str(error.value).startswith("CLASSIFIER_MODELS=")
    assert message in str(error.value)


def test_upload_limit_default_and_override():
    assert load_settings({}).max_upload_bytes == 32 * 1024 * 1024
    assert load_settings({"CLASSIFIER_MAX_UPLOAD_BYTES": "1000"}).max_upload_bytes == 1000
    with pytest.raises(ConfigError, match="CLASSIFIER_MAX_UPLOAD_BYTES"):
        load_settings({"CLASSIFIER_MAX_UPLOAD_BYTES": "0"})


@pytest.mark.parametrize(
    "key, raw",
    [
        ("CLASSIFIER_MODELS", json.dumps({"f": {**FLOWERS, "url": "https://b.example/f.tflite?X-Goog-Signature=SECRET1",
                                               "output": "softmax"}})),
        ("CLASSIFIER_MODELS", '{"f": {"url": "https://user:SECRET2@b.example/f.tflite", not json'),
        ("CLASSIFIER_TOP_K", "https://x.example/?token=SECRET3"),
    ],
)
def test_a_configuration_error_quotes_the_value_without_its_secrets(key, raw):
    """Signed URLs (query strings, credentials) are printed redacted: errors end up in logs."""
    with pytest.raises(ConfigError) as error:
        load_settings({key: raw})
    assert str(error.value).startswith(f"{key}=")
    assert "b.example/f.tflite" in str(error.value) or "x.example" in str(error.value)
    assert "SECRET" not in str(error.value)


def test_litert_threads_default_to_one_per_cpu_and_refuse_negatives():
    assert load_settings({}).litert_threads == 0  # runtime.load: os.cpu_count()
    assert load_settings({"CLASSIFIER_LITERT_THREADS": "1"}).litert_threads == 1
    with pytest.raises(ConfigError, match="CLASSIFIER_LITERT_THREADS='-1': must be 0 or more"):
        load_settings({"CLASSIFIER_LITERT_THREADS": "-1"})
