from callqos.v1 import flowspec_pb2 as _flowspec_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProviderCapabilities(_message.Message):
    __slots__ = ("qos_supported", "renegotiation", "provider_initiated_changes", "link_admin", "service_types", "max_reservable_bytes_per_second", "max_sdu_size_bytes", "min_latency_microseconds", "policy", "policy_note", "incoming_calls", "reservation_listing")
    QOS_SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    RENEGOTIATION_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_INITIATED_CHANGES_FIELD_NUMBER: _ClassVar[int]
    LINK_ADMIN_FIELD_NUMBER: _ClassVar[int]
    SERVICE_TYPES_FIELD_NUMBER: _ClassVar[int]
    MAX_RESERVABLE_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    MAX_SDU_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MIN_LATENCY_MICROSECONDS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    POLICY_NOTE_FIELD_NUMBER: _ClassVar[int]
    INCOMING_CALLS_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_LISTING_FIELD_NUMBER: _ClassVar[int]
    qos_supported: bool
    renegotiation: bool
    provider_initiated_changes: bool
    link_admin: bool
    service_types: _containers.RepeatedScalarFieldContainer[_flowspec_pb2.ServiceType]
    max_reservable_bytes_per_second: int
    max_sdu_size_bytes: int
    min_latency_microseconds: int
    policy: bool
    policy_note: str
    incoming_calls: bool
    reservation_listing: bool
    def __init__(self, qos_supported: _Optional[bool] = ..., renegotiation: _Optional[bool] = ..., provider_initiated_changes: _Optional[bool] = ..., link_admin: _Optional[bool] = ..., service_types: _Optional[_Iterable[_Union[_flowspec_pb2.ServiceType, str]]] = ..., max_reservable_bytes_per_second: _Optional[int] = ..., max_sdu_size_bytes: _Optional[int] = ..., min_latency_microseconds: _Optional[int] = ..., policy: _Optional[bool] = ..., policy_note: _Optional[str] = ..., incoming_calls: _Optional[bool] = ..., reservation_listing: _Optional[bool] = ...) -> None: ...

class Provider(_message.Message):
    __slots__ = ("name", "display_name", "description", "capabilities", "default", "implementation")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    IMPLEMENTATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    description: str
    capabilities: ProviderCapabilities
    default: bool
    implementation: str
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ..., capabilities: _Optional[_Union[ProviderCapabilities, _Mapping]] = ..., default: _Optional[bool] = ..., implementation: _Optional[str] = ...) -> None: ...

class Link(_message.Message):
    __slots__ = ("name", "capacity_bytes_per_second", "sending_reserved_bytes_per_second", "receiving_reserved_bytes_per_second", "mtu_bytes", "reservation_count", "error_term_c_bytes", "error_term_d_microseconds", "min_path_latency_microseconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    SENDING_RESERVED_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    RECEIVING_RESERVED_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    MTU_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_TERM_C_BYTES_FIELD_NUMBER: _ClassVar[int]
    ERROR_TERM_D_MICROSECONDS_FIELD_NUMBER: _ClassVar[int]
    MIN_PATH_LATENCY_MICROSECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    capacity_bytes_per_second: int
    sending_reserved_bytes_per_second: int
    receiving_reserved_bytes_per_second: int
    mtu_bytes: int
    reservation_count: int
    error_term_c_bytes: int
    error_term_d_microseconds: int
    min_path_latency_microseconds: int
    def __init__(self, name: _Optional[str] = ..., capacity_bytes_per_second: _Optional[int] = ..., sending_reserved_bytes_per_second: _Optional[int] = ..., receiving_reserved_bytes_per_second: _Optional[int] = ..., mtu_bytes: _Optional[int] = ..., reservation_count: _Optional[int] = ..., error_term_c_bytes: _Optional[int] = ..., error_term_d_microseconds: _Optional[int] = ..., min_path_latency_microseconds: _Optional[int] = ...) -> None: ...
