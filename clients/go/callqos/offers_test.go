package callqos_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/callqos/callqos/clients/go/callqos"
	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
)

// newAddress is an address no other test uses (the test server is shared).
func newAddress(t *testing.T) string {
	t.Helper()
	return fmt.Sprintf("sip:%s@example.test", rand.Text()[:12])
}

// openLine opens a line for a fresh address as c's principal, closed when the test ends.
func openLine(t *testing.T, c *callqos.Client) *callqosv1.Line {
	t.Helper()
	line, err := c.CreateLine(testContext(t), &callqosv1.CreateLineRequest{Line: &callqosv1.Line{
		Address: newAddress(t), NoAnswerTimeout: durationpb.New(30e9),
	}})
	if err != nil {
		t.Fatalf("CreateLine: %v", err)
	}
	t.Cleanup(func() { c.CloseLine(context.Background(), line.GetName()) })
	return line
}

func ring(t *testing.T, c *callqos.Client, line *callqosv1.Line, level callqosv1.ServiceLevel, rate uint64) *callqosv1.Call {
	t.Helper()
	call, err := c.CreateCall(testContext(t), &callqosv1.CreateCallRequest{Call: &callqosv1.Call{
		Destination: line.GetAddress(), ServiceLevel: level, RequestedQos: callqos.ControlledLoad(rate),
	}})
	if err != nil || call.GetState() != callqosv1.Call_STATE_RINGBACK {
		t.Fatalf("CreateCall to an open line = %v, %v; want RINGBACK", call, err)
	}
	t.Cleanup(func() { c.DropCall(context.Background(), call.GetName()) })
	return call
}

func TestLinesOffersAnswerAndReject(t *testing.T) {
	bob, carol := newClient(t, addr, "bob"), newClient(t, addr, "carol")
	ctx := testContext(t)
	line := openLine(t, bob)
	if line.GetOwner() != "bob" || line.GetState() != callqosv1.Line_STATE_OPEN {
		t.Fatalf("line = %v", line)
	}
	_, err := carol.CreateLine(ctx, &callqosv1.CreateLineRequest{Line: &callqosv1.Line{Address: line.GetAddress()}})
	var e *callqos.Error
	if !errors.As(err, &e) || e.Reason() != callqos.ReasonAddressInUse {
		t.Fatalf("a second line for the address: %v, want ADDRESS_IN_USE", err)
	}

	early := ring(t, carol, line, callqosv1.ServiceLevel_SERVICE_LEVEL_IF_AVAILABLE, 40_000)
	watcher := bob.NewOfferWatcher(line.GetName(), nil)
	var offered []*callqosv1.Call
	var later *callqosv1.Call
	for call, err := range watcher.Calls(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		offered = append(offered, call)
		if len(offered) == 2 {
			break
		}
		later = ring(t, carol, line, callqosv1.ServiceLevel_SERVICE_LEVEL_NEEDED, 40_000)
	}
	if offered[0].GetName() != early.GetPeer() || offered[1].GetName() != later.GetPeer() {
		t.Fatalf("offers = %v, %v; want %s then %s", offered[0].GetName(), offered[1].GetName(), early.GetPeer(), later.GetPeer())
	}
	if got := offered[0].GetRequestedQos().GetReceiving().GetTokenRateBytesPerSecond(); got != 40_000 {
		t.Errorf("the offer receives %d, want the caller's sending 40000 (mirrored)", got)
	}
	if _, ok := watcher.LastSequence(); !ok {
		t.Error("no LastSequence after an offer event")
	}

	// IF_AVAILABLE: bob receives less than carol sends, and carol sees what she got.
	less := &callqosv1.QosSpec{
		Sending: &callqosv1.FlowSpec{ServiceType: callqosv1.ServiceType_SERVICE_TYPE_NO_CHANGE},
		Receiving: &callqosv1.FlowSpec{
			ServiceType: callqosv1.ServiceType_SERVICE_TYPE_CONTROLLED_LOAD, TokenRateBytesPerSecond: proto.Uint64(25_000),
		},
	}
	answered, err := bob.AnswerCall(ctx, &callqosv1.AnswerCallRequest{Name: early.GetPeer(), Qos: less})
	if err != nil || answered.GetState() != callqosv1.Call_STATE_CONNECTED {
		t.Fatalf("AnswerCall = %v, %v", answered, err)
	}
	mine, _ := carol.GetCall(ctx, early.GetName())
	if sendingRate(mine.GetGrantedQos()) != 25_000 || sendingRate(mine.GetRequestedQos()) != 40_000 {
		t.Errorf("carol's call: granted %v requested %v", mine.GetGrantedQos(), mine.GetRequestedQos())
	}
	// NEEDED: the same answer fails the call, with the offer as bob's counter-offer.
	_, err = bob.AnswerCall(ctx, &callqosv1.AnswerCallRequest{Name: later.GetPeer(), Qos: less})
	if qe, ok := callqos.IsQosUnavailable(err); !ok || qe.CounterOffer() == nil {
		t.Fatalf("an answer below a NEEDED request: %v, want *QosUnavailableError with a counter-offer", err)
	}
	// A third call, rejected.
	third := ring(t, carol, line, callqosv1.ServiceLevel_SERVICE_LEVEL_NEEDED, 1000)
	rejected, err := bob.RejectCall(ctx, third.GetPeer())
	if err != nil || rejected.GetDisconnectReason() != callqosv1.DisconnectReason_DISCONNECT_REASON_REJECTED {
		t.Fatalf("RejectCall = %v, %v", rejected, err)
	}
	_, err = bob.AnswerCall(ctx, &callqosv1.AnswerCallRequest{Name: third.GetPeer()})
	if !errors.As(err, &e) || e.Reason() != callqos.ReasonCallNotOffering {
		t.Fatalf("answering a rejected call: %v, want CALL_NOT_OFFERING", err)
	}
	closed, err := bob.CloseLine(ctx, line.GetName())
	if err != nil || closed.GetState() != callqosv1.Line_STATE_CLOSED {
		t.Fatalf("CloseLine = %v, %v", closed, err)
	}
	page, err := bob.ListLines(ctx, &callqosv1.ListLinesRequest{Filter: `address = "` + line.GetAddress() + `"`})
	if err != nil || len(page.GetLines()) != 1 || page.GetLines()[0].GetName() != line.GetName() {
		t.Fatalf("ListLines(address) = %v, %v", page, err)
	}
}

func TestOfferWatcherResumesFromItsCursor(t *testing.T) {
	bob, carol := newClient(t, addr, "bob"), newClient(t, addr, "carol")
	ctx := testContext(t)
	line := openLine(t, bob)
	ring(t, carol, line, callqosv1.ServiceLevel_SERVICE_LEVEL_NEEDED, 1000)
	first := bob.NewOfferWatcher(line.GetName(), nil)
	for _, err := range first.Calls(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		break
	}
	cursor, ok := first.LastSequence()
	if !ok {
		t.Fatal("no cursor")
	}
	gone := ring(t, carol, line, callqosv1.ServiceLevel_SERVICE_LEVEL_NEEDED, 1000)
	if _, err := bob.RejectCall(ctx, gone.GetPeer()); err != nil {
		t.Fatal(err)
	}
	ringing := ring(t, carol, line, callqosv1.ServiceLevel_SERVICE_LEVEL_NEEDED, 1000)
	for call, err := range bob.NewOfferWatcher(line.GetName(), &cursor).Calls(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		if call.GetName() != ringing.GetPeer() {
			t.Fatalf("resumed offers yielded %s; want %s (the rejected %s is no longer ringing)", call.GetName(), ringing.GetPeer(), gone.GetPeer())
		}
		break
	}
}
