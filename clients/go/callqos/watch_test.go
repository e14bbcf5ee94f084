package callqos_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/callqos/callqos/clients/go/callqos"
	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
)

// lifecycle connects a call, renegotiates it once and drops it: QOS_GRANTED, QOS_CHANGED,
// CALL_DISCONNECTED.
func lifecycle(t *testing.T, c *callqos.Client) string {
	t.Helper()
	ctx := testContext(t)
	call := connect(t, c, 100_000)
	if _, err := c.RenegotiateCall(ctx, &callqosv1.RenegotiateCallRequest{
		Name: call.GetName(), Qos: callqos.ControlledLoad(50_000),
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DropCall(ctx, call.GetName()); err != nil {
		t.Fatal(err)
	}
	return call.GetName()
}

var lifecycleTypes = []callqosv1.QosEventType{
	callqosv1.QosEventType_QOS_EVENT_TYPE_QOS_GRANTED,
	callqosv1.QosEventType_QOS_EVENT_TYPE_QOS_CHANGED,
	callqosv1.QosEventType_QOS_EVENT_TYPE_CALL_DISCONNECTED,
}

// collect ranges over a watch until it has n events.
func collect(t *testing.T, w *callqos.Watcher, n int) []*callqosv1.QosEvent {
	t.Helper()
	var got []*callqosv1.QosEvent
	for ev, err := range w.Events(testContext(t)) {
		if err != nil {
			t.Fatalf("after %d events: %v", len(got), err)
		}
		if got = append(got, ev); len(got) == n {
			return got
		}
	}
	t.Fatalf("watch ended after %d of %d events", len(got), n)
	return nil
}

func types(evs []*callqosv1.QosEvent) []callqosv1.QosEventType {
	var ts []callqosv1.QosEventType
	for _, ev := range evs {
		ts = append(ts, ev.GetType())
	}
	return ts
}

func TestWatchResumesFromCursor(t *testing.T) {
	c := newClient(t, addr, "alice")
	name := lifecycle(t, c)
	w := c.NewWatcher(&callqosv1.WatchEventsRequest{AfterSequence: proto.Uint64(0), Call: name})
	all := collect(t, w, 3)
	if !slices.Equal(types(all), lifecycleTypes) || all[0].GetCall() != name {
		t.Fatalf("events = %v", all)
	}
	if last, ok := w.LastSequence(); !ok || last != all[2].GetSequence() {
		t.Errorf("LastSequence = %d, %v; want %d", last, ok, all[2].GetSequence())
	}
	// A new watch from the first event's sequence gets exactly the rest.
	rest := collect(t, c.NewWatcher(&callqosv1.WatchEventsRequest{
		AfterSequence: proto.Uint64(all[0].GetSequence()), Call: name,
	}), 2)
	for i, ev := range rest {
		if !proto.Equal(ev, all[i+1]) {
			t.Errorf("resumed event %d = %v, want %v", i, ev, all[i+1])
		}
	}
}

// TestWatchReconnectsAfterCut breaks the stream under a running watch (through a loopback
// proxy) and checks that the Watcher reconnects and continues after the last event it gave.
func TestWatchReconnectsAfterCut(t *testing.T) {
	direct := newClient(t, addr, "alice")
	p := startProxy(t, addr)
	proxied := newClient(t, p.addr(), "alice")
	ctx := testContext(t)
	call := connect(t, direct, 100_000)

	var got []*callqosv1.QosEvent
	for ev, err := range proxied.Watch(ctx, &callqosv1.WatchEventsRequest{
		AfterSequence: proto.Uint64(0), Call: call.GetName(),
	}) {
		if err != nil {
			t.Fatalf("after %v: %v", types(got), err)
		}
		got = append(got, ev)
		if len(got) == 1 {
			// Cut the connection, then make the remaining events while the watch is down.
			p.cut()
			if _, err := direct.RenegotiateCall(ctx, &callqosv1.RenegotiateCallRequest{
				Name: call.GetName(), Qos: callqos.ControlledLoad(50_000),
			}); err != nil {
				t.Fatal(err)
			}
			if _, err := direct.DropCall(ctx, call.GetName()); err != nil {
				t.Fatal(err)
			}
		}
		if len(got) == 3 {
			break
		}
	}
	if !slices.Equal(types(got), lifecycleTypes) {
		t.Fatalf("events across the cut = %v, want %v", types(got), lifecycleTypes)
	}
	if got[0].GetSequence() >= got[1].GetSequence() || got[1].GetSequence() >= got[2].GetSequence() {
		t.Errorf("sequences not increasing: %d %d %d", got[0].GetSequence(), got[1].GetSequence(), got[2].GetSequence())
	}
	if p.connections() < 2 {
		t.Errorf("the proxy saw %d connection(s); the watch did not reconnect", p.connections())
	}
}

// watchFirst starts w in the background and waits until its stream is open (it then has the
// server's start sequence); the first event or error arrives on the returned channel.
func watchFirst(t *testing.T, w *callqos.Watcher) <-chan *callqosv1.QosEvent {
	ctx, cancel := context.WithCancel(testContext(t))
	t.Cleanup(cancel)
	first := make(chan *callqosv1.QosEvent, 1)
	go func() {
		for ev, err := range w.Events(ctx) {
			if err != nil {
				t.Errorf("watch: %v", err)
			}
			first <- ev
			return
		}
	}()
	for {
		if _, ok := w.LastSequence(); ok {
			return first
		}
		select {
		case <-ctx.Done():
			t.Fatal("the watch stream did not open (no x-callqos-start-sequence header?)")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestWatchOnlyNewEvents: without a cursor only events committed after the watch starts come.
func TestWatchOnlyNewEvents(t *testing.T) {
	c := newClient(t, addr, "alice")
	lifecycle(t, c) // older events, which must not be delivered
	first := watchFirst(t, c.NewWatcher(&callqosv1.WatchEventsRequest{}))
	call := connect(t, c, 1000)
	ev := <-first
	if ev.GetCall() != call.GetName() || ev.GetType() != callqosv1.QosEventType_QOS_EVENT_TYPE_QOS_GRANTED {
		t.Fatalf("first event = %v, want the QOS_GRANTED of %s", ev, call.GetName())
	}
}

// TestWatchFromNowResumesBeforeFirstEvent: a watch without a cursor whose stream breaks before
// any event still gets the events committed meanwhile (it resumes from the start sequence).
func TestWatchFromNowResumesBeforeFirstEvent(t *testing.T) {
	direct := newClient(t, addr, "alice")
	p := startProxy(t, addr)
	first := watchFirst(t, newClient(t, p.addr(), "alice").NewWatcher(&callqosv1.WatchEventsRequest{}))
	p.cut()
	call := connect(t, direct, 1000) // while the watch is down or reconnecting
	ev := <-first
	if ev.GetCall() != call.GetName() || ev.GetType() != callqosv1.QosEventType_QOS_EVENT_TYPE_QOS_GRANTED {
		t.Fatalf("first event = %v, want the QOS_GRANTED of %s", ev, call.GetName())
	}
	if p.connections() < 2 {
		t.Errorf("the proxy saw %d connection(s); the watch did not reconnect", p.connections())
	}
}
