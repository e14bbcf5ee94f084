package callqos_test

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/callqos/callqos/clients/go/callqos"
	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
)

// TestEveryReasonHasItsCode walks every ErrorReason: each has a (grpc_code) option in
// errors.proto, and CodeOf returns it.
func TestEveryReasonHasItsCode(t *testing.T) {
	values := callqosv1.ErrorReason(0).Descriptor().Values()
	for i := range values.Len() {
		v := values.Get(i)
		if v.Number() == 0 {
			continue
		}
		if !proto.HasExtension(v.Options(), callqosv1.E_GrpcCode) {
			t.Errorf("%s has no (callqos.v1.grpc_code) option in errors.proto", v.Name())
			continue
		}
		want := proto.GetExtension(v.Options(), callqosv1.E_GrpcCode).(callqosv1.GrpcCode)
		if got := callqos.CodeOf(callqosv1.ErrorReason(v.Number())); got == codes.Unknown || uint32(got) != uint32(want) {
			t.Errorf("CodeOf(%s) = %v, want %v", v.Name(), got, want)
		}
	}
	if got := callqos.CodeOf(callqosv1.ErrorReason_ERROR_REASON_UNSPECIFIED); got != codes.Unknown {
		t.Errorf("CodeOf(UNSPECIFIED) = %v, want Unknown", got)
	}
}

// TestGrpcCodeIsGoogleRpcCode: errors.proto's own GrpcCode enum has google.rpc.Code's names
// and numbers (0 aside), so a grpc_code option means what it says.
func TestGrpcCodeIsGoogleRpcCode(t *testing.T) {
	values := callqosv1.GrpcCode(0).Descriptor().Values()
	for i := range values.Len() {
		v := values.Get(i)
		if v.Number() == 0 {
			continue
		}
		name := strings.TrimPrefix(string(v.Name()), "GRPC_CODE_")
		if code.Code_name[int32(v.Number())] != name {
			t.Errorf("%s = %d, but google.rpc.Code %d is %s", v.Name(), v.Number(), v.Number(), code.Code_name[int32(v.Number())])
		}
	}
	if values.Len() != len(code.Code_name) {
		t.Errorf("GrpcCode has %d values, google.rpc.Code %d", values.Len(), len(code.Code_name))
	}
}

// TestReasonConstantsAreErrorReasons: the Reason* shortcuts name real ErrorReason values, and
// the two a *QosUnavailableError stands for are sent with the codes its documentation says.
func TestReasonConstantsAreErrorReasons(t *testing.T) {
	for constant, want := range map[string]callqosv1.ErrorReason{
		callqos.ReasonQosUnavailable:   callqosv1.ErrorReason_ERROR_REASON_QOS_UNAVAILABLE,
		callqos.ReasonQosPolicyFailure: callqosv1.ErrorReason_ERROR_REASON_QOS_POLICY_FAILURE,
		callqos.ReasonInvalidRequest:   callqosv1.ErrorReason_ERROR_REASON_INVALID_REQUEST,
		callqos.ReasonCallNotFound:     callqosv1.ErrorReason_ERROR_REASON_CALL_NOT_FOUND,
		callqos.ReasonNotOwner:         callqosv1.ErrorReason_ERROR_REASON_NOT_OWNER,
		callqos.ReasonCursorExpired:    callqosv1.ErrorReason_ERROR_REASON_CURSOR_EXPIRED,
	} {
		value := want.Descriptor().Values().ByName(protoreflect.Name("ERROR_REASON_" + constant))
		if value == nil || callqos.Reason(want) != constant {
			t.Errorf("%q is not the reason string of %v", constant, want)
		}
	}
	if callqos.CodeOf(callqosv1.ErrorReason_ERROR_REASON_QOS_UNAVAILABLE) != codes.ResourceExhausted ||
		callqos.CodeOf(callqosv1.ErrorReason_ERROR_REASON_QOS_POLICY_FAILURE) != codes.PermissionDenied {
		t.Error("the refusal reasons are not sent with RESOURCE_EXHAUSTED / PERMISSION_DENIED")
	}
}

// TestServerErrorsCarryTheirReasonsCode: what the real server sends matches the option.
func TestServerErrorsCarryTheirReasonsCode(t *testing.T) {
	c := newClient(t, addr, "alice")
	_, err := c.GetCall(testContext(t), "calls/no-such-call")
	var e *callqos.Error
	if !errors.As(err, &e) || e.Reason() != callqos.ReasonCallNotFound || e.Info.GetDomain() != callqos.Domain {
		t.Fatalf("GetCall of a missing call: %v, want CALL_NOT_FOUND in domain %s", err, callqos.Domain)
	}
	if e.Code() != callqos.CodeOf(callqosv1.ErrorReason_ERROR_REASON_CALL_NOT_FOUND) {
		t.Errorf("code = %v, errors.proto says %v", e.Code(), callqos.CodeOf(callqosv1.ErrorReason_ERROR_REASON_CALL_NOT_FOUND))
	}
}
