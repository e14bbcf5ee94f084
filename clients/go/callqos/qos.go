package callqos

import (
	"google.golang.org/protobuf/proto"

	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
)

// ControlledLoad is a QosSpec that sends at rate bytes per second under CONTROLLED_LOAD
// (RFC 2211; packets of 64 to 1500 bytes) and receives best effort: the usual request for
// one media stream.
func ControlledLoad(rate uint64) *callqosv1.QosSpec {
	return &callqosv1.QosSpec{
		Sending: &callqosv1.FlowSpec{
			ServiceType:             callqosv1.ServiceType_SERVICE_TYPE_CONTROLLED_LOAD,
			TokenRateBytesPerSecond: proto.Uint64(rate),
			TokenBucketSizeBytes:    proto.Uint64(max(rate/10, 1500)),
			MaxSduSizeBytes:         proto.Uint32(1500),
			MinimumPolicedSizeBytes: proto.Uint32(64),
		},
		Receiving: &callqosv1.FlowSpec{ServiceType: callqosv1.ServiceType_SERVICE_TYPE_BEST_EFFORT},
	}
}
