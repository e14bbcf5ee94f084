package callqos_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/callqos/callqos/clients/go/callqos"
	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
)

// leased makes a call with a lease of d against the test server.
func leased(t *testing.T, c *callqos.Client, d time.Duration) *callqosv1.Call {
	t.Helper()
	call, err := c.CreateCall(testContext(t), &callqosv1.CreateCallRequest{Call: &callqosv1.Call{
		Destination:   "sip:lease@example.com",
		RequestedQos:  callqos.ControlledLoad(1_000),
		LeaseDuration: durationpb.New(d),
	}})
	if err != nil {
		t.Fatalf("CreateCall: %v", err)
	}
	return call
}

func state(t *testing.T, c *callqos.Client, name string) *callqosv1.Call {
	t.Helper()
	call, err := c.GetCall(testContext(t), name)
	if err != nil {
		t.Fatal(err)
	}
	return call
}

func reasonOf(err error) string {
	var e *callqos.Error
	if errors.As(err, &e) {
		return e.Reason()
	}
	return ""
}

func TestExtendCall(t *testing.T) {
	c := newClient(t, addr, "alice")
	call := leased(t, c, 30*time.Second)
	defer c.DropCall(context.Background(), call.GetName())
	renewed, err := c.ExtendCall(testContext(t), &callqosv1.ExtendCallRequest{
		Name: call.GetName(), LeaseDuration: durationpb.New(90 * time.Second),
	})
	if err != nil {
		t.Fatal(err)
	}
	if renewed.GetLeaseDuration().AsDuration() != 90*time.Second || renewed.GetEtag() != call.GetEtag() {
		t.Fatalf("renewed = %v (etag %s, was %s)", renewed.GetLeaseDuration(), renewed.GetEtag(), call.GetEtag())
	}
	if !renewed.GetLeaseExpireTime().AsTime().After(call.GetLeaseExpireTime().AsTime()) {
		t.Fatal("the lease did not move")
	}
	_, err = c.ExtendCall(testContext(t), &callqosv1.ExtendCallRequest{
		Name: call.GetName(), LeaseDuration: durationpb.New(500 * time.Millisecond),
	})
	if reasonOf(err) != callqos.ReasonInvalidRequest {
		t.Fatalf("a lease below 1 s: %v", err)
	}
	plain := connect(t, c, 1_000)
	if _, err := c.ExtendCall(testContext(t), &callqosv1.ExtendCallRequest{Name: plain.GetName()}); reasonOf(err) != callqos.ReasonCallNotLeased {
		t.Fatalf("extending a call without a lease: %v", err)
	}
	if _, err := c.KeepAlive(testContext(t), plain); err == nil {
		t.Fatal("KeepAlive of a call without a lease")
	}
}

func TestKeepAliveKeepsTheCallThenDropsIt(t *testing.T) {
	c := newClient(t, addr, "alice")
	// A 3 s lease renewed every second: each renewal has two seconds to get through, enough on a
	// busy machine; the call is held for more than two leases.
	call := leased(t, c, 3*time.Second)
	ka, err := c.KeepAlive(context.Background(), call)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ka.Lost():
		t.Fatalf("lost: %v", ka.Err())
	case <-time.After(7 * time.Second):
	}
	if got := state(t, c, call.GetName()).GetState(); got != callqosv1.Call_STATE_CONNECTED {
		t.Fatalf("state %v while kept alive", got)
	}
	if ka.Renewals() < 5 {
		t.Fatalf("%d renewals", ka.Renewals())
	}
	if err := ka.Close(); err != nil {
		t.Fatal(err)
	}
	ended := state(t, c, call.GetName())
	if ended.GetDisconnectReason() != callqosv1.DisconnectReason_DISCONNECT_REASON_NORMAL {
		t.Fatalf("after Close: %v %v", ended.GetState(), ended.GetDisconnectReason())
	}
	if ka.Context().Err() == nil {
		t.Fatal("the keep-alive's context outlived Close")
	}
}

func TestKeepAliveSurfacesALostLease(t *testing.T) {
	c := newClient(t, addr, "alice")
	call := leased(t, c, 3*time.Second)
	ka, err := c.KeepAlive(context.Background(), call, callqos.WithRenewInterval(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.DropCall(testContext(t), call.GetName()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ka.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("the loss was not noticed")
	}
	var lost *callqos.LeaseLostError
	if !errors.As(ka.Err(), &lost) || lost.Call != call.GetName() || reasonOf(lost) != callqos.ReasonCallNotConnected {
		t.Fatalf("Err() = %v", ka.Err())
	}
	if cause := context.Cause(ka.Context()); !errors.As(cause, &lost) {
		t.Fatalf("the context's cause is %v", cause)
	}
	if err := ka.Close(); !errors.As(err, &lost) {
		t.Fatalf("Close() = %v", err)
	}
}

func TestKeepAliveWithoutDropLeavesTheCallToItsLease(t *testing.T) {
	c := newClient(t, addr, "alice")
	call := leased(t, c, 3*time.Second)
	ka, err := c.KeepAlive(context.Background(), call, callqos.WithoutDrop())
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if err := ka.Close(); err != nil {
		t.Fatal(err)
	}
	if got := state(t, c, call.GetName()).GetState(); got != callqosv1.Call_STATE_CONNECTED {
		t.Fatalf("state %v right after Close WithoutDrop", got)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		ended := state(t, c, call.GetName())
		if ended.GetState() == callqosv1.Call_STATE_DISCONNECTED {
			if ended.GetDisconnectReason() != callqosv1.DisconnectReason_DISCONNECT_REASON_LEASE_EXPIRED {
				t.Fatalf("ended %v", ended.GetDisconnectReason())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the lease never ran out")
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, err = c.ExtendCall(testContext(t), &callqosv1.ExtendCallRequest{Name: call.GetName()})
	if reasonOf(err) != callqos.ReasonLeaseExpired {
		t.Fatalf("extending after the lease ran out: %v", err)
	}
}
