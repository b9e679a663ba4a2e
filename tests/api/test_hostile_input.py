"""Hostile numbers, strings and headers get a 4xx with a code, never a 500.

Each case here once answered 500 (a ValueError from the JSON parser past 4,300 digits, the
multipart parser's own error for a long boundary, OSError for long paths, an int64
overflow); the property tests throw huge, negative and non-finite numbers and long strings
at the request schemas.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.conftest import TestClient, dataset_zip, error_of, leftovers, settings_of

BIG = "9" * 5000
JSON_HEADERS = {"content-type": "application/json"}
IMAGE = {"b64": "iVBORw0KGgo="}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"model": "m", "top_k": BIG, "instances": [{"b64": "AAAA"}]}', "bad_request"),
        ('{"model": "m", "x": BIG, "instances": [{"b64": "AAAA"}]}', "bad_request"),
        ('{"model": "m", "version": 9223372036854775808, "instances": []}', "unprocessable"),
        ('{"model": "m", "top_k": NaN, "instances": [{"b64": "AAAA"}]}', "unprocessable"),
    ],
)
def test_hostile_predict_bodies_are_4xx(client: TestClient, body: str, expected: str):
    body = body.replace("BIG", BIG)
    status, code = error_of(client.post("/predict", content=body, headers=JSON_HEADERS))
    assert (status // 100, code) == (4, expected)


def test_a_huge_integer_in_the_config_field_is_invalid_config(client: TestClient):
    config = '{"model_name": "m", "epochs": BIG}'.replace("BIG", BIG)
    response = client.post(
        "/finetune", files={"dataset": ("d.zip", dataset_zip())}, data={"config": config}
    )
    assert error_of(response) == (422, "invalid_config")
    assert leftovers(settings_of(client)) == []


def test_a_huge_integer_in_a_json_finetune_is_400(client: TestClient):
    body = '{"model_name": "m", "data_uri": "x", "epochs": BIG}'.replace("BIG", BIG)
    assert error_of(client.post("/finetune", content=body, headers=JSON_HEADERS)) == (
        400,
        "bad_request",
    )


def test_a_boundary_past_256_bytes_is_400(client: TestClient):
    boundary = "a" * 300
    response = client.post(
        "/finetune",
        content=f"--{boundary}\r\n".encode(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert error_of(response) == (400, "bad_request")


@pytest.mark.parametrize("data_uri", ["a" * 300, "/".join(["abc"] * 1500), "x/" + "b" * 5000])
def test_data_uri_past_the_file_system_limits_is_400(client: TestClient, data_uri: str):
    response = client.post("/finetune", json={"model_name": "m", "data_uri": data_uri})
    assert error_of(response) == (400, "invalid_data_uri")


def test_a_label_move_to_a_version_past_int64_is_422(client: TestClient):
    response = client.put("/models/m/labels/stable", json={"version": 2**63})
    assert error_of(response) == (422, "unprocessable")


numbers = st.one_of(
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3000),
    st.none(),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(top_k=numbers, version=numbers, label=numbers, model=st.text(max_size=3000))
def test_predict_never_answers_500(client: TestClient, top_k, version, label, model):
    body = {"model": model, "top_k": top_k, "version": version, "label": label}
    response = client.post(
        "/predict",
        content=json.dumps({**body, "instances": [IMAGE]}, allow_nan=True),
        headers=JSON_HEADERS,
    )
    assert response.status_code < 500 or response.status_code in (503, 504), response.text


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    epochs=numbers,
    learning_rate=numbers,
    batch_size=numbers,
    base_model=st.text(max_size=3000),
    weights=st.text(max_size=3000),
)
def test_finetune_config_never_answers_500(
    client: TestClient, epochs, learning_rate, batch_size, base_model, weights
):
    config = {
        "model_name": "m",
        "epochs": epochs,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "base_model": base_model,
        "weights": weights,
    }
    response = client.post(
        "/finetune",
        files={"dataset": ("d.zip", dataset_zip())},
        data={"config": json.dumps(config, allow_nan=True)},
    )
    assert response.status_code < 500, response.text
