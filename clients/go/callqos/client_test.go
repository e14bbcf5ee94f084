package callqos_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/callqos/callqos/clients/go/callqos"
	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
)

// linkCapacity is the reference provider's default link: 1,250,000 bytes/s each way.
const linkCapacity = 1_250_000

func TestCreateGetDrop(t *testing.T) {
	c := newClient(t, addr, "alice")
	ctx := testContext(t)
	call := connect(t, c, 100_000)
	if call.GetState() != callqosv1.Call_STATE_CONNECTED || sendingRate(call.GetGrantedQos()) != 100_000 {
		t.Fatalf("call = %v", call)
	}
	if call.GetOwner() != "alice" {
		t.Errorf("owner = %q, want alice (the x-callqos-principal header)", call.GetOwner())
	}
	got, err := c.GetCall(ctx, call.GetName())
	if err != nil || !proto.Equal(got.GetGrantedQos(), call.GetGrantedQos()) {
		t.Fatalf("GetCall = %v, %v", got, err)
	}
	dropped, err := c.DropCall(ctx, call.GetName())
	if err != nil || dropped.GetState() != callqosv1.Call_STATE_DISCONNECTED ||
		dropped.GetDisconnectReason() != callqosv1.DisconnectReason_DISCONNECT_REASON_NORMAL {
		t.Fatalf("DropCall = %v, %v", dropped, err)
	}
}

func TestRefusalCarriesCounterOffer(t *testing.T) {
	c := newClient(t, addr, "alice")
	ctx := testContext(t)
	req := &callqosv1.CreateCallRequest{Call: &callqosv1.Call{
		Destination:  "sip:carol@example.com",
		ServiceLevel: callqosv1.ServiceLevel_SERVICE_LEVEL_NEEDED,
		RequestedQos: callqos.ControlledLoad(2 * linkCapacity),
	}}
	_, err := c.CreateCall(ctx, req)
	qe, ok := callqos.IsQosUnavailable(err)
	if !ok {
		t.Fatalf("CreateCall beyond capacity: %v, want *QosUnavailableError", err)
	}
	// The typed error still behaves as a gRPC status error, and unwraps to *Error.
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("code = %v, want RESOURCE_EXHAUSTED", status.Code(err))
	}
	var e *callqos.Error
	if !errors.As(err, &e) || e.Info.GetDomain() != callqos.Domain || e.Reason() != callqos.ReasonQosUnavailable {
		t.Errorf("ErrorInfo = %v", e.Info)
	}
	if qe.Reason() != callqos.Reason(callqosv1.ErrorReason_ERROR_REASON_QOS_UNAVAILABLE) {
		t.Errorf("reason = %q", qe.Reason())
	}
	offer := qe.CounterOffer()
	if qe.Call() == "" || offer == nil || sendingRate(offer) == 0 || sendingRate(offer) > linkCapacity {
		t.Fatalf("refusal = %v", qe.Err.Refusal)
	}
	// The refused call is recorded as disconnected for QOS_UNAVAILABLE.
	refused, err := c.GetCall(ctx, qe.Call())
	if err != nil || refused.GetDisconnectReason() != callqosv1.DisconnectReason_DISCONNECT_REASON_QOS_UNAVAILABLE {
		t.Errorf("refused call = %v, %v", refused, err)
	}

	req.Call.RequestedQos = offer
	call, err := c.CreateCall(ctx, req)
	if err != nil {
		t.Fatalf("CreateCall with the counter-offer: %v", err)
	}
	t.Cleanup(func() { c.DropCall(context.Background(), call.GetName()) })
	if sendingRate(call.GetGrantedQos()) != sendingRate(offer) {
		t.Errorf("granted %d, offered %d", sendingRate(call.GetGrantedQos()), sendingRate(offer))
	}
}

func TestRenegotiation(t *testing.T) {
	c := newClient(t, addr, "alice")
	ctx := testContext(t)
	call := connect(t, c, 200_000)
	for _, rate := range []uint64{400_000, 100_000} {
		var err error
		call, err = c.RenegotiateCall(ctx, &callqosv1.RenegotiateCallRequest{
			Name: call.GetName(), Qos: callqos.ControlledLoad(rate), Etag: call.GetEtag(),
		})
		if err != nil || sendingRate(call.GetGrantedQos()) != rate {
			t.Fatalf("RenegotiateCall to %d = %v, %v", rate, call, err)
		}
	}
	// A refused renegotiation keeps the call as it was.
	_, err := c.RenegotiateCall(ctx, &callqosv1.RenegotiateCallRequest{
		Name: call.GetName(), Qos: callqos.ControlledLoad(2 * linkCapacity),
	})
	qe, ok := callqos.IsQosUnavailable(err)
	if !ok || qe.Call() != call.GetName() {
		t.Fatalf("RenegotiateCall beyond capacity: %v, want a QoS refusal for %s", err, call.GetName())
	}
	after, err := c.GetCall(ctx, call.GetName())
	if err != nil || !proto.Equal(after.GetGrantedQos(), call.GetGrantedQos()) ||
		after.GetState() != callqosv1.Call_STATE_CONNECTED {
		t.Errorf("after a refused renegotiation: %v, %v; want granted_qos unchanged", after, err)
	}
	// Only the owner may renegotiate.
	_, err = newClient(t, addr, "mallory").RenegotiateCall(ctx, &callqosv1.RenegotiateCallRequest{
		Name: call.GetName(), Qos: callqos.ControlledLoad(1000),
	})
	var e *callqos.Error
	if !errors.As(err, &e) || e.Code() != codes.PermissionDenied || e.Reason() != callqos.ReasonNotOwner {
		t.Errorf("renegotiation by another principal: %v, want PERMISSION_DENIED / NOT_OWNER", err)
	}
}

func TestInvalidRequestNamesTheField(t *testing.T) {
	c := newClient(t, addr, "alice")
	qos := callqos.ControlledLoad(1000)
	qos.Sending.ServiceType = callqosv1.ServiceType_SERVICE_TYPE_UNSPECIFIED // never valid
	_, err := c.CreateCall(testContext(t), &callqosv1.CreateCallRequest{Call: &callqosv1.Call{
		Destination: "sip:dave@example.com", RequestedQos: qos,
	}})
	var e *callqos.Error
	if !errors.As(err, &e) || e.Code() != codes.InvalidArgument || e.Reason() != callqos.ReasonInvalidRequest ||
		len(e.BadRequest.GetFieldViolations()) == 0 {
		t.Fatalf("CreateCall with no sending service type: %v (details %v), want INVALID_ARGUMENT with BadRequest", err, e)
	}
}

func TestDefaultDeadline(t *testing.T) {
	c := newClient(t, addr, "alice", callqos.WithTimeout(time.Nanosecond))
	_, err := c.ListProviders(context.Background(), &callqosv1.ListProvidersRequest{})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("with a 1ns default deadline: %v, want DEADLINE_EXCEEDED", err)
	}
	// A deadline on the context wins over the default.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.ListProviders(ctx, &callqosv1.ListProvidersRequest{}); err != nil {
		t.Fatalf("with a 10s context deadline: %v", err)
	}
}
