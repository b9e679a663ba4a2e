"""``GET /backbones``: the choices of ``base_model``, described without TensorFlow."""

from __future__ import annotations

from service.contract.train_config import BASE_MODELS, TrainConfig
from tests.api.conftest import MakeClient, TestClient, error_of

TOKEN = "s3cret-token"


def test_lists_every_backbone_in_the_contracts_order(client: TestClient):
    response = client.get("/backbones")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"default", "items"}
    assert [item["name"] for item in body["items"]] == list(BASE_MODELS)
    assert body["default"] == TrainConfig(model_name="any").base_model
    by_name = {item["name"]: item for item in body["items"]}
    assert by_name["mobilenet_v2"] == {
        "name": "mobilenet_v2",
        "default_image_size": 224,
        "min_image_size": 32,
        "preprocessing": "tf",
        "imagenet_weights": True,
    }
    assert by_name["small_cnn"] == {
        "name": "small_cnn",
        "default_image_size": 32,
        "min_image_size": 8,
        "preprocessing": "unit",
        "imagenet_weights": False,
    }


def test_each_listed_backbone_is_a_valid_choice_at_its_sizes(client: TestClient):
    for item in client.get("/backbones").json()["items"]:
        assert item["min_image_size"] <= item["default_image_size"], item
        assert item["preprocessing"] in {"tf", "caffe", "unit", "none"}, item
        for size in (item["min_image_size"], item["default_image_size"]):
            config = TrainConfig.parse(
                {"model_name": "m", "base_model": item["name"], "image_size": size}
            )
            assert config.base_model == item["name"]


def test_needs_the_token_like_the_other_read_routes(make_client: MakeClient):
    client = make_client(api_token=TOKEN)

    assert error_of(client.get("/backbones")) == (401, "unauthorized")
    assert error_of(client.get("/backbones", headers={"Authorization": "Bearer no"})) == (
        401,
        "unauthorized",
    )
    answered = client.get("/backbones", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answered.status_code == 200
    assert answered.json() == make_client().get("/backbones").json()


def test_is_documented_with_its_response_schema(make_client: MakeClient):
    document = make_client(api_token=TOKEN).get("/openapi.json").json()

    operation = document["paths"]["/backbones"]["get"]
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/BackboneList"}
    assert "401" in operation["responses"] and operation["security"]
    schemas = document["components"]["schemas"]
    assert schemas["BackboneList"]["required"] == ["default", "items"]
    assert set(schemas["BackboneView"]["properties"]) == {
        "name",
        "default_image_size",
        "min_image_size",
        "preprocessing",
        "imagenet_weights",
    }
