"""The message classes of the inference and health services, built at import from
the compiled descriptors (descriptor.py) in a descriptor pool of ml-api's own. Its
own pool, not protobuf's default one: a client library that defines the same
``inference.*`` or ``grpc.health.v1.*`` messages (tritonclient, grpcio-health-checking)
can live in the same process without a clash."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from mlapi.rpc.descriptor import HEALTH_DESCRIPTOR, INFERENCE_DESCRIPTOR

SERVICE = "inference.GRPCInferenceService"
HEALTH_SERVICE = "grpc.health.v1.Health"

_POOL = descriptor_pool.DescriptorPool()
for _file in (INFERENCE_DESCRIPTOR, HEALTH_DESCRIPTOR):
    _POOL.Add(descriptor_pb2.FileDescriptorProto.FromString(_file))


def message_class(name: str, package: str = "inference") -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{package}.{name}"))


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

HealthCheckRequest = message_class("HealthCheckRequest", "grpc.health.v1")
HealthCheckResponse = message_class("HealthCheckResponse", "grpc.health.v1")
HealthListRequest = message_class("HealthListRequest", "grpc.health.v1")
HealthListResponse = message_class("HealthListResponse", "grpc.health.v1")


def method_names(service: str = SERVICE) -> list[str]:
    """The service's methods, as the .proto declares them."""
    return [method.name for method in _POOL.FindServiceByName(service).methods]
