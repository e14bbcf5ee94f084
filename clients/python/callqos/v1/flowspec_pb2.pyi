from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServiceType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVICE_TYPE_UNSPECIFIED: _ClassVar[ServiceType]
    SERVICE_TYPE_BEST_EFFORT: _ClassVar[ServiceType]
    SERVICE_TYPE_CONTROLLED_LOAD: _ClassVar[ServiceType]
    SERVICE_TYPE_GUARANTEED: _ClassVar[ServiceType]
    SERVICE_TYPE_NETWORK_UNAVAILABLE: _ClassVar[ServiceType]
    SERVICE_TYPE_GENERAL_INFORMATION: _ClassVar[ServiceType]
    SERVICE_TYPE_NO_CHANGE: _ClassVar[ServiceType]
    SERVICE_TYPE_NONCONFORMING: _ClassVar[ServiceType]
    SERVICE_TYPE_NETWORK_CONTROL: _ClassVar[ServiceType]
    SERVICE_TYPE_QUALITATIVE: _ClassVar[ServiceType]
    SERVICE_TYPE_NO_TRAFFIC: _ClassVar[ServiceType]
SERVICE_TYPE_UNSPECIFIED: ServiceType
SERVICE_TYPE_BEST_EFFORT: ServiceType
SERVICE_TYPE_CONTROLLED_LOAD: ServiceType
SERVICE_TYPE_GUARANTEED: ServiceType
SERVICE_TYPE_NETWORK_UNAVAILABLE: ServiceType
SERVICE_TYPE_GENERAL_INFORMATION: ServiceType
SERVICE_TYPE_NO_CHANGE: ServiceType
SERVICE_TYPE_NONCONFORMING: ServiceType
SERVICE_TYPE_NETWORK_CONTROL: ServiceType
SERVICE_TYPE_QUALITATIVE: ServiceType
SERVICE_TYPE_NO_TRAFFIC: ServiceType

class FlowSpec(_message.Message):
    __slots__ = ("token_rate_bytes_per_second", "token_bucket_size_bytes", "peak_bandwidth_bytes_per_second", "peak_bandwidth_unbounded", "latency_microseconds", "delay_variation_microseconds", "service_type", "max_sdu_size_bytes", "minimum_policed_size_bytes", "no_qos_signaling", "no_traffic_control")
    TOKEN_RATE_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BUCKET_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PEAK_BANDWIDTH_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    PEAK_BANDWIDTH_UNBOUNDED_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MICROSECONDS_FIELD_NUMBER: _ClassVar[int]
    DELAY_VARIATION_MICROSECONDS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_SDU_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_POLICED_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    NO_QOS_SIGNALING_FIELD_NUMBER: _ClassVar[int]
    NO_TRAFFIC_CONTROL_FIELD_NUMBER: _ClassVar[int]
    token_rate_bytes_per_second: int
    token_bucket_size_bytes: int
    peak_bandwidth_bytes_per_second: int
    peak_bandwidth_unbounded: bool
    latency_microseconds: int
    delay_variation_microseconds: int
    service_type: ServiceType
    max_sdu_size_bytes: int
    minimum_policed_size_bytes: int
    no_qos_signaling: bool
    no_traffic_control: bool
    def __init__(self, token_rate_bytes_per_second: _Optional[int] = ..., token_bucket_size_bytes: _Optional[int] = ..., peak_bandwidth_bytes_per_second: _Optional[int] = ..., peak_bandwidth_unbounded: _Optional[bool] = ..., latency_microseconds: _Optional[int] = ..., delay_variation_microseconds: _Optional[int] = ..., service_type: _Optional[_Union[ServiceType, str]] = ..., max_sdu_size_bytes: _Optional[int] = ..., minimum_policed_size_bytes: _Optional[int] = ..., no_qos_signaling: _Optional[bool] = ..., no_traffic_control: _Optional[bool] = ...) -> None: ...

class QosSpec(_message.Message):
    __slots__ = ("sending", "receiving", "provider_specific")
    SENDING_FIELD_NUMBER: _ClassVar[int]
    RECEIVING_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_SPECIFIC_FIELD_NUMBER: _ClassVar[int]
    sending: FlowSpec
    receiving: FlowSpec
    provider_specific: bytes
    def __init__(self, sending: _Optional[_Union[FlowSpec, _Mapping]] = ..., receiving: _Optional[_Union[FlowSpec, _Mapping]] = ..., provider_specific: _Optional[bytes] = ...) -> None: ...
