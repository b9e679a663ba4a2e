"""The repository's ``models.config``, written with the lean ModelServerConfig copy, is what
TensorFlow Serving's own messages read: same field names and numbers, same text."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor, text_format
from tensorflow_serving.config import model_server_config_pb2 as official

from service.contract import model_server_config_pb2 as lean
from service.contract.repository import ModelRepository
from service.model_server.config import model_settings, read_model_server_config
from tests.support.servers import add_version


def fields(message: descriptor.Descriptor) -> dict[str, tuple[int, int, bool]]:
    return {f.name: (f.number, f.type, f.is_repeated) for f in message.fields}


def test_every_lean_field_has_the_official_name_number_and_type():
    pairs = [
        (lean.ModelServerConfig.DESCRIPTOR, official.ModelServerConfig.DESCRIPTOR),
        (lean.ModelConfigList.DESCRIPTOR, official.ModelConfigList.DESCRIPTOR),
        (lean.ModelConfig.DESCRIPTOR, official.ModelConfig.DESCRIPTOR),
    ]
    policy = official.ModelConfig.DESCRIPTOR.fields_by_name["model_version_policy"].message_type
    pairs.append((lean.ServableVersionPolicy.DESCRIPTOR, policy))
    for name in ("Latest", "All", "Specific"):
        lean_nested = lean.ServableVersionPolicy.DESCRIPTOR.nested_types_by_name[name]
        pairs.append((lean_nested, policy.nested_types_by_name[name]))
    for ours, theirs in pairs:
        mine = fields(ours)
        assert mine or ours.name == "All", ours.full_name
        assert {k: v for k, v in fields(theirs).items() if k in mine} == mine, ours.full_name


def test_the_written_config_parses_with_the_official_messages(tmp_path: Path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "saved_model.pb").write_bytes(b"\x08\x01")
    repo = ModelRepository(tmp_path / "repo")
    add_version(repo.root, source, model="cats", label="stable")
    add_version(repo.root, source, model="cats", label="canary")
    add_version(repo.root, source, model="dogs", label="stable")

    text = repo.config_path.read_text()
    parsed = text_format.Parse(text, official.ModelServerConfig())
    cats, dogs = parsed.model_config_list.config
    assert (cats.name, cats.base_path) == ("cats", str(repo.root / "cats"))
    assert list(cats.model_version_policy.specific.versions) == [1, 2]
    assert dict(cats.version_labels) == {"stable": 1, "canary": 2}
    assert (dogs.name, dict(dogs.version_labels)) == ("dogs", {"stable": 1})
    # Byte-compatible too: the lean bytes parse as the official message and back.
    lean_config = text_format.Parse(text, lean.ModelServerConfig())
    assert official.ModelServerConfig.FromString(lean_config.SerializeToString()) == parsed
    # And the model server's own reader accepts it.
    settings = model_settings(read_model_server_config(repo.config_path))
    assert sorted(settings) == ["cats", "dogs"]
    assert settings["cats"].labels == {"stable": 1, "canary": 2}
