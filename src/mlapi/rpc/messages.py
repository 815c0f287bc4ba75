"""The protocol's message classes, built at import from the compiled descriptor
(descriptor.py) in a descriptor pool of ml-api's own. Its own pool, not protobuf's
default one: a client library that defines the same ``inference.*`` messages
(tritonclient does) can live in the same process without a clash."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from mlapi.rpc.descriptor import FILE_DESCRIPTOR

SERVICE = "inference.GRPCInferenceService"

_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(descriptor_pb2.FileDescriptorProto.FromString(FILE_DESCRIPTOR))


def message_class(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"inference.{name}"))


ServerLiveRequest = message_class("ServerLiveRequest")
ServerLiveResponse = message_class("ServerLiveResponse")
ServerReadyRequest = message_class("ServerReadyRequest")
ServerReadyResponse = message_class("ServerReadyResponse")
ModelReadyRequest = message_class("ModelReadyRequest")
ModelReadyResponse = message_class("ModelReadyResponse")
ServerMetadataRequest = message_class("ServerMetadataRequest")
ServerMetadataResponse = message_class("ServerMetadataResponse")
ModelMetadataRequest = message_class("ModelMetadataRequest")
ModelMetadataResponse = message_class("ModelMetadataResponse")
ModelInferRequest = message_class("ModelInferRequest")
ModelInferResponse = message_class("ModelInferResponse")
RepositoryIndexRequest = message_class("RepositoryIndexRequest")
RepositoryIndexResponse = message_class("RepositoryIndexResponse")
RepositoryModelLoadRequest = message_class("RepositoryModelLoadRequest")
RepositoryModelLoadResponse = message_class("RepositoryModelLoadResponse")
RepositoryModelUnloadRequest = message_class("RepositoryModelUnloadRequest")
RepositoryModelUnloadResponse = message_class("RepositoryModelUnloadResponse")


def method_names() -> list[str]:
    """The service's methods, as the .proto declares them."""
    return [method.name for method in _POOL.FindServiceByName(SERVICE).methods]
