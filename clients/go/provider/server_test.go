package provider_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	providerv1 "github.com/callqos/callqos/clients/go/gen/callqos/provider/v1"
	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
	"github.com/callqos/callqos/clients/go/provider"
)

// ledger is a test provider: it grants every request up to a capacity (sending token rates)
// and records what it was asked, so the tests see what reached it.
type ledger struct {
	mu        sync.Mutex
	host      provider.Host
	capacity  uint64
	held      map[string]uint64
	admits    int
	restored  [][]string
	traces    []trace.TraceID
	block     chan struct{} // when set, Admit waits on it (or its ctx)
	ignoreCtx bool          // and then grants anyway
	checking  chan struct{} // when set, ValidateProviderSpecific waits on it (before any decision starts)
}

func newLedger(capacity uint64) *ledger {
	return &ledger{capacity: capacity, held: map[string]uint64{}}
}

func (l *ledger) Info() provider.Info {
	return provider.Info{DisplayName: "ledger", Version: "test", Capabilities: &callqosv1.ProviderCapabilities{
		QosSupported: true, Renegotiation: true, LinkAdmin: true, ProviderInitiatedChanges: true,
		ServiceTypes:                []callqosv1.ServiceType{callqosv1.ServiceType_SERVICE_TYPE_CONTROLLED_LOAD},
		MaxReservableBytesPerSecond: l.capacity,
	}}
}

func (l *ledger) Start(host provider.Host) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.host = host
	return nil
}

func (l *ledger) Restore(ctx context.Context, calls []provider.Held) ([]provider.Change, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var names []string
	for _, c := range calls {
		l.held[c.Call] = c.QoS.GetSending().GetTokenRateBytesPerSecond()
		names = append(names, c.Call)
	}
	l.restored = append(l.restored, names)
	return nil, nil
}

func (l *ledger) used() uint64 {
	total := uint64(0)
	for _, rate := range l.held {
		total += rate
	}
	return total
}

func (l *ledger) Admit(ctx context.Context, r provider.Request) (provider.Decision, error) {
	l.mu.Lock()
	l.admits++
	l.traces = append(l.traces, trace.SpanContextFromContext(ctx).TraceID())
	block := l.block
	l.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			if !l.ignoreCtx {
				return provider.Decision{}, ctx.Err()
			}
			<-block
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	rate := r.QoS.GetSending().GetTokenRateBytesPerSecond()
	if l.used()+rate > l.capacity {
		return provider.Refuse(provider.Admission, "full", nil), nil
	}
	l.held[r.Call] = rate
	return provider.Grant(r.QoS), nil
}

func (l *ledger) Renegotiate(ctx context.Context, r provider.Request) (provider.Decision, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.held[r.Call] = r.QoS.GetSending().GetTokenRateBytesPerSecond()
	return provider.Grant(r.QoS), nil
}

func (l *ledger) Release(ctx context.Context, call string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.held, call)
	return nil
}

func (l *ledger) ListLinks(ctx context.Context) ([]*callqosv1.Link, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return []*callqosv1.Link{{Name: "links/only", CapacityBytesPerSecond: l.capacity, SendingReservedBytesPerSecond: l.used()}}, nil
}

func (l *ledger) UpdateLink(ctx context.Context, link string, capacity uint64) (*callqosv1.Link, error) {
	if link != "only" {
		return nil, provider.ErrUnknownLink
	}
	l.mu.Lock()
	l.capacity = capacity
	var dropped []string
	for call := range l.held {
		if l.used() > l.capacity {
			delete(l.held, call)
			dropped = append(dropped, call)
		}
	}
	l.mu.Unlock()
	for _, call := range dropped {
		l.host.ReportChange(provider.Change{Call: call, Message: "link shrank"})
	}
	links, _ := l.ListLinks(ctx)
	return links[0], nil
}

func (l *ledger) ValidateProviderSpecific(data []byte) []string {
	l.mu.Lock()
	checking := l.checking
	l.mu.Unlock()
	if checking != nil {
		<-checking
	}
	if bytes.HasPrefix(data, []byte("ok")) {
		return nil
	}
	return []string{"must start with ok"}
}

// seen is what reached the provider: its decisions, the traces they ran in, the Restores.
func (l *ledger) seen() (int, []trace.TraceID, [][]string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.admits, append([]trace.TraceID(nil), l.traces...), append([][]string(nil), l.restored...)
}

// lines is an io.Writer the test can read while Serve writes to it.
type lines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *lines) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(b)
}

func (w *lines) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func (l *ledger) holds() map[string]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]uint64{}
	for k, v := range l.held {
		out[k] = v
	}
	return out
}

// serve runs p on a Unix socket for the test and returns a protocol client, the server (for
// ReportChange) and what Serve wrote as its handshake.
func serve(t *testing.T, p provider.Provider) (providerv1.ProviderServiceClient, *provider.Server, string) {
	t.Helper()
	client, server, handshake, _ := serveAt(t, p)
	return client, server, handshake
}

// serveAt is serve, also returning the socket's path.
func serveAt(t *testing.T, p provider.Provider) (providerv1.ProviderServiceClient, *provider.Server, string, string) {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "cq-go-kit-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "provider.sock")
	ctx, cancel := context.WithCancel(context.Background())
	handshake := &lines{}
	ready := make(chan *provider.Server, 1)
	done := make(chan error, 1)
	go func() {
		done <- provider.Serve(ctx, p, provider.Options{
			Listen: "unix://" + socket, Handshake: handshake,
			Ready: func(s *provider.Server, _ string) { ready <- s },
		})
	}()
	var server *provider.Server
	select {
	case server = <-ready:
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(handshake.String(), "\n") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	return providerv1.NewProviderServiceClient(conn), server, handshake.String(), socket
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func cl(rate uint64) *callqosv1.QosSpec {
	return &callqosv1.QosSpec{
		Sending:   &callqosv1.FlowSpec{ServiceType: callqosv1.ServiceType_SERVICE_TYPE_CONTROLLED_LOAD, TokenRateBytesPerSecond: proto.Uint64(rate)},
		Receiving: &callqosv1.FlowSpec{ServiceType: callqosv1.ServiceType_SERVICE_TYPE_BEST_EFFORT},
	}
}

func admit(call, requestID string, rate uint64) *providerv1.AdmitRequest {
	return &providerv1.AdmitRequest{Call: call, RequestId: requestID, Destination: "sip:x", ServiceLevel: callqosv1.ServiceLevel_SERVICE_LEVEL_NEEDED, Qos: cl(rate)}
}

func codeOf(err error) codes.Code { return status.Code(err) }

func TestServeShakesHandsAndReportsHealth(t *testing.T) {
	client, _, handshake := serve(t, newLedger(1000))
	fields := strings.Split(strings.TrimSpace(handshake), "|")
	if len(fields) != 5 || fields[0] != "CALLQOS_PROVIDER" || fields[1] != "1" || fields[2] != "unix" || fields[4] != "grpc" {
		t.Fatalf("handshake line %q", handshake)
	}
	_ = client
	conn, err := grpc.NewClient("unix://"+fields[3], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	answer, err := healthpb.NewHealthClient(conn).Check(testContext(t), &healthpb.HealthCheckRequest{Service: provider.HealthService})
	if err != nil || answer.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", answer, err)
	}
}

func TestServeWithoutALauncherOrAnAddressSaysSo(t *testing.T) {
	t.Setenv(provider.MagicCookieEnv, "")
	if err := provider.Serve(context.Background(), newLedger(1), provider.Options{}); !errors.Is(err, provider.ErrNotLaunched) {
		t.Fatalf("Serve: %v", err)
	}
}

func TestDecisionsWaitForTheRestore(t *testing.T) {
	client, _, _ := serve(t, newLedger(1000))
	if _, err := client.Admit(testContext(t), admit("calls/a", "r1", 10)); codeOf(err) != codes.FailedPrecondition {
		t.Fatalf("Admit before Restore: %v", err)
	}
}

func TestARetriedAdmitIsAnsweredAgainAndReachesTheProviderOnce(t *testing.T) {
	p := newLedger(1000)
	client, _, _ := serve(t, p)
	ctx := testContext(t)
	if _, err := client.Restore(ctx, &providerv1.RestoreRequest{}); err != nil {
		t.Fatal(err)
	}
	first, err := client.Admit(ctx, admit("calls/a", "r1", 600))
	if err != nil {
		t.Fatal(err)
	}
	again, err := client.Admit(ctx, admit("calls/a", "r1", 600))
	if err != nil || !proto.Equal(first, again) || first.GetGrant() == nil {
		t.Fatalf("repeat: %v %v", again, err)
	}
	if admits, _, _ := p.seen(); admits != 1 {
		t.Fatalf("the provider decided %d times", admits)
	}
	if _, err := client.Admit(ctx, admit("calls/a", "r2", 600)); codeOf(err) != codes.FailedPrecondition {
		t.Fatalf("another request_id for a held call: %v", err)
	}
	for i := 0; i < 2; i++ {
		if _, err := client.Release(ctx, &providerv1.ReleaseRequest{Call: "calls/a", RequestId: "r3"}); err != nil {
			t.Fatal(err)
		}
	}
	if got := p.holds(); len(got) != 0 {
		t.Fatalf("still held: %v", got)
	}
	listed, _ := client.ListReservations(ctx, &providerv1.ListReservationsRequest{})
	if len(listed.GetReservations()) != 0 {
		t.Fatalf("reservations: %v", listed)
	}
}

func TestAReleaseCancelsAnAdmissionStillBeingDecided(t *testing.T) {
	for _, ignoresCtx := range []bool{false, true} {
		p := newLedger(1000)
		p.block, p.ignoreCtx = make(chan struct{}), ignoresCtx
		client, _, _ := serve(t, p)
		ctx := testContext(t)
		client.Restore(ctx, &providerv1.RestoreRequest{})
		answered := make(chan error, 1)
		go func() {
			_, err := client.Admit(ctx, admit("calls/b", "r1", 700))
			answered <- err
		}()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if n, _, _ := p.seen(); n == 1 || time.Now().After(deadline) {
				break
			}
		}
		released := make(chan error, 1)
		go func() {
			_, err := client.Release(ctx, &providerv1.ReleaseRequest{Call: "calls/b", RequestId: "r2"})
			released <- err
		}()
		if ignoresCtx {
			time.Sleep(50 * time.Millisecond)
			close(p.block) // it grants anyway, after the release
		}
		if err := <-answered; codeOf(err) != codes.Aborted {
			t.Fatalf("ignoresCtx=%v: the cancelled admission answered %v", ignoresCtx, err)
		}
		if err := <-released; err != nil {
			t.Fatal(err)
		}
		if got := p.holds(); len(got) != 0 {
			t.Fatalf("ignoresCtx=%v: still held after the release: %v", ignoresCtx, got)
		}
	}
}

func TestRestoreMakesTheProviderHoldExactlyWhatTheServerHolds(t *testing.T) {
	p := newLedger(10_000)
	client, server, _ := serve(t, p)
	ctx := testContext(t)
	held := func(call string, rate uint64) *providerv1.HeldCall {
		return &providerv1.HeldCall{Call: call, Destination: "sip:x", ServiceLevel: callqosv1.ServiceLevel_SERVICE_LEVEL_NEEDED, Qos: cl(rate)}
	}
	if _, err := client.Restore(ctx, &providerv1.RestoreRequest{Calls: []*providerv1.HeldCall{held("calls/a", 100), held("calls/b", 200)}}); err != nil {
		t.Fatal(err)
	}
	// The server comes back holding b (at other QoS: the provider's own is answered), c (new
	// to this process: re-taken) and no longer a (released).
	again, err := client.Restore(ctx, &providerv1.RestoreRequest{Calls: []*providerv1.HeldCall{held("calls/b", 250), held("calls/c", 300)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(again.GetChanges()) != 1 || again.GetChanges()[0].GetCall() != "calls/b" || again.GetChanges()[0].GetQos().GetSending().GetTokenRateBytesPerSecond() != 200 {
		t.Fatalf("answered %v", again.GetChanges())
	}
	if got := p.holds(); len(got) != 2 || got["calls/b"] != 200 || got["calls/c"] != 300 {
		t.Fatalf("holds %v", got)
	}
	if _, _, restored := p.seen(); len(restored) != 2 || len(restored[1]) != 1 || restored[1][0] != "calls/c" {
		t.Fatalf("Restore calls %v", restored)
	}
	// A call the provider dropped on its own (not yet acknowledged) stays dropped.
	p.Release(ctx, "calls/c")
	server.ReportChange(provider.Change{Call: "calls/c", Message: "gone"})
	third, err := client.Restore(ctx, &providerv1.RestoreRequest{Calls: []*providerv1.HeldCall{held("calls/b", 200), held("calls/c", 300)}})
	if err != nil || len(third.GetChanges()) != 1 || third.GetChanges()[0].GetQos() != nil || third.GetChanges()[0].GetMessage() != "gone" {
		t.Fatalf("third restore: %v %v", third, err)
	}
}

func TestChangesAreReplayedUntilAcknowledged(t *testing.T) {
	p := newLedger(1000)
	client, server, _ := serve(t, p)
	ctx := testContext(t)
	info, _ := client.GetProviderInfo(ctx, &providerv1.GetProviderInfoRequest{})
	instance := info.GetInstanceId()
	server.ReportChange(provider.Change{Call: "calls/a", QoS: cl(1), Message: "degraded"})
	server.ReportChange(provider.Change{Call: "calls/b", Message: "dropped"})
	server.ReportChange(provider.Change{Call: "calls/a", Message: "then dropped"})
	read := func(instanceID string, after uint64, n int) []uint64 {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		stream, err := client.WatchChanges(ctx, &providerv1.WatchChangesRequest{InstanceId: instanceID, AfterSequence: after})
		if err != nil {
			t.Fatal(err)
		}
		var got []uint64
		for len(got) < n {
			answer, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, answer.GetChange().GetSequence())
		}
		return got
	}
	if got := read(instance, 0, 2); len(got) != 2 || got[0] != 2 || got[1] != 3 {
		t.Fatalf("replayed %v (the newest change per call, in order)", got)
	}
	if got := read(instance, 2, 1); got[0] != 3 {
		t.Fatalf("after 2: %v", got)
	}
	if got := read("another", 3, 2); got[0] != 2 {
		t.Fatalf("another instance's cursor is ignored: %v", got)
	}
	client.AckChanges(ctx, &providerv1.AckChangesRequest{InstanceId: instance, Sequence: 2})
	if got := read(instance, 0, 1); got[0] != 3 {
		t.Fatalf("after the acknowledgement: %v", got)
	}
}

func TestUpdateLinkSaysWhichChangesItCaused(t *testing.T) {
	p := newLedger(1000)
	client, _, _ := serve(t, p)
	ctx := testContext(t)
	client.Restore(ctx, &providerv1.RestoreRequest{})
	client.Admit(ctx, admit("calls/a", "r1", 600))
	same, err := client.UpdateLink(ctx, &providerv1.UpdateLinkRequest{Link: "links/only", CapacityBytesPerSecond: 900})
	if err != nil || same.GetChangeSequence() != 0 {
		t.Fatalf("nothing shed: %v %v", same, err)
	}
	shrunk, err := client.UpdateLink(ctx, &providerv1.UpdateLinkRequest{Link: "links/only", CapacityBytesPerSecond: 100})
	if err != nil || shrunk.GetChangeSequence() != 1 {
		t.Fatalf("one call shed: %v %v", shrunk, err)
	}
	if _, err := client.UpdateLink(ctx, &providerv1.UpdateLinkRequest{Link: "links/none", CapacityBytesPerSecond: 1}); codeOf(err) != codes.NotFound {
		t.Fatalf("unknown link: %v", err)
	}
}

func TestProviderSpecificBytesTheProviderRefusesAreInvalidArgument(t *testing.T) {
	p := newLedger(1000)
	client, _, _ := serve(t, p)
	ctx := testContext(t)
	client.Restore(ctx, &providerv1.RestoreRequest{})
	request := admit("calls/a", "r1", 10)
	request.Qos.ProviderSpecific = []byte("nope")
	_, err := client.Admit(ctx, request)
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument || len(st.Details()) != 1 {
		t.Fatalf("Admit: %v", err)
	}
	bad := st.Details()[0].(*errdetails.BadRequest)
	if admits, _, _ := p.seen(); bad.GetFieldViolations()[0].GetField() != "qos.provider_specific" || admits != 0 {
		t.Fatalf("violations %v, admits %d", bad, admits)
	}
}

func TestTheCallersTraceReachesTheProvider(t *testing.T) {
	p := newLedger(1000)
	client, _, _ := serve(t, p)
	ctx := testContext(t)
	client.Restore(ctx, &providerv1.RestoreRequest{})
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	if _, err := client.Admit(ctx, admit("calls/a", "r1", 10)); err != nil {
		t.Fatal(err)
	}
	if _, traces, _ := p.seen(); traces[0].String() != traceID {
		got := traces[0].String()
		t.Fatalf("the provider's context is in trace %s", got)
	}
}

func TestTheDecideStreamAnswersAsTheMethodsDo(t *testing.T) {
	p := newLedger(1000)
	client, _, _ := serve(t, p)
	ctx := testContext(t)
	info, _ := client.GetProviderInfo(ctx, &providerv1.GetProviderInfoRequest{})
	if !info.GetDecideStream() {
		t.Fatal("the kit serves Decide and says so")
	}
	client.Restore(ctx, &providerv1.RestoreRequest{})
	stream, err := client.Decide(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	bad := admit("calls/b", "r2", 10)
	bad.Qos.ProviderSpecific = []byte("nope")
	requests := []*providerv1.DecideRequest{
		{Id: 1, Timeout: durationpb.New(5 * time.Second), Traceparent: "00-" + traceID + "-00f067aa0ba902b7-01",
			Request: &providerv1.DecideRequest_Admit{Admit: admit("calls/a", "r1", 600)}},
		{Id: 2, Request: &providerv1.DecideRequest_Admit{Admit: bad}},
		{Id: 3, Request: &providerv1.DecideRequest_Admit{Admit: admit("calls/c", "r3", 600)}},
	}
	for _, r := range requests {
		if err := stream.Send(r); err != nil {
			t.Fatal(err)
		}
	}
	answers := map[uint64]*providerv1.DecideResponse{}
	for len(answers) < len(requests) {
		answer, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		answers[answer.GetId()] = answer
	}
	if f := answers[2].GetFailure(); f.GetCode() != callqosv1.GrpcCode_GRPC_CODE_INVALID_ARGUMENT || len(f.GetProviderSpecificViolations()) != 1 {
		t.Fatalf("2: %v", answers[2])
	}
	// Answered concurrently: only one of a and c fits, whichever came first.
	granted := ""
	for id, call := range map[uint64]string{1: "calls/a", 3: "calls/c"} {
		if answers[id].GetAdmit().GetGrant() != nil {
			granted += call
		} else if answers[id].GetAdmit().GetRefusal() == nil {
			t.Fatalf("%d: %v", id, answers[id])
		}
	}
	if granted != "calls/a" && granted != "calls/c" {
		t.Fatalf("granted %q", granted)
	}
	if err := stream.Send(&providerv1.DecideRequest{Id: 4, Request: &providerv1.DecideRequest_Release{Release: &providerv1.ReleaseRequest{Call: granted}}}); err != nil {
		t.Fatal(err)
	}
	if answer, err := stream.Recv(); err != nil || answer.GetId() != 4 || answer.GetRelease() == nil {
		t.Fatalf("4: %v %v", answer, err)
	}
	if got := p.holds(); len(got) != 0 {
		t.Fatalf("still held: %v", got)
	}
	_, traces, _ := p.seen()
	found := false
	for _, id := range traces {
		found = found || id.String() == traceID
	}
	if !found {
		t.Fatalf("no decision ran in the caller's trace: %v", traces)
	}
	stream.CloseSend()
}

// The host writes a Release after the Admit it gave up on, on the same stream. The kit answers
// them concurrently, so the Release may start before the Admit's decision does (here: the Admit
// is held in the provider-specific check). It must still win: the Admit grants nothing, and
// nothing stays reserved for the call (CORE-CANCEL-001 found this leak in the classquota example).
func TestAReleaseOnTheStreamStopsTheAdmitWrittenBeforeIt(t *testing.T) {
	p := newLedger(1000)
	p.checking = make(chan struct{})
	client, _, _ := serve(t, p)
	ctx := testContext(t)
	client.Restore(ctx, &providerv1.RestoreRequest{})
	stream, err := client.Decide(ctx)
	if err != nil {
		t.Fatal(err)
	}
	given := admit("calls/late", "r1", 600)
	given.Qos.ProviderSpecific = []byte("ok")
	for _, r := range []*providerv1.DecideRequest{
		{Id: 1, Request: &providerv1.DecideRequest_Admit{Admit: given}},
		{Id: 2, Request: &providerv1.DecideRequest_Release{Release: &providerv1.ReleaseRequest{Call: "calls/late", RequestId: "r2"}}},
	} {
		if err := stream.Send(r); err != nil {
			t.Fatal(err)
		}
	}
	answers := make(chan *providerv1.DecideResponse, 2)
	go func() {
		for {
			answer, err := stream.Recv()
			if err != nil {
				return
			}
			answers <- answer
		}
	}()
	got := map[uint64]*providerv1.DecideResponse{}
	select { // a Release that does not wait for the Admit before it answers now
	case answer := <-answers:
		got[answer.GetId()] = answer
	case <-time.After(300 * time.Millisecond):
	}
	close(p.checking)
	for len(got) < 2 {
		select {
		case answer := <-answers:
			got[answer.GetId()] = answer
		case <-ctx.Done():
			t.Fatalf("answers: %v", got)
		}
	}
	if got[2].GetRelease() == nil {
		t.Fatalf("the release answered %v", got[2])
	}
	if got[1].GetAdmit().GetGrant() != nil {
		t.Fatalf("the admit released before it was decided was granted: %v", got[1])
	}
	if held := p.holds(); len(held) != 0 {
		t.Fatalf("the provider still holds %v after the release", held)
	}
	listed, err := client.ListReservations(ctx, &providerv1.ListReservationsRequest{})
	if err != nil || len(listed.GetReservations()) != 0 {
		t.Fatalf("the kit lists %v (%v) after the release", listed, err)
	}
	// The call's name is free again: the host may admit it anew after the release (a retry).
	again, err := client.Admit(ctx, admit("calls/late", "r3", 600))
	if err != nil || again.GetGrant() == nil {
		t.Fatalf("a new admission after the release: %v %v", again, err)
	}
	stream.CloseSend()
}

// listing is the ledger provider with reservation listing: its books are its held map.
type listing struct{ *ledger }

func (l listing) Info() provider.Info {
	info := l.ledger.Info()
	info.Capabilities.ReservationListing = true
	return info
}

func (l listing) Reservations(ctx context.Context) ([]provider.Holding, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var held []provider.Holding
	for call, rate := range l.held {
		held = append(held, provider.Holding{Call: call, Sending: rate, Link: "links/only"})
	}
	return held, nil
}

func TestListReservationsCarriesTheProvidersBooks(t *testing.T) {
	p := listing{newLedger(10_000)}
	client, _, _ := serve(t, p)
	ctx := testContext(t)
	calls := []*providerv1.HeldCall{
		{Call: "calls/a", Destination: "sip:x", ServiceLevel: callqosv1.ServiceLevel_SERVICE_LEVEL_NEEDED, Qos: cl(100)},
		{Call: "calls/b", Destination: "sip:x", ServiceLevel: callqosv1.ServiceLevel_SERVICE_LEVEL_NEEDED, Qos: cl(200)},
	}
	if _, err := client.Restore(ctx, &providerv1.RestoreRequest{Calls: calls}); err != nil {
		t.Fatal(err)
	}
	// The books lose b and book a call nobody made: the kit's ledger cannot see either.
	p.mu.Lock()
	delete(p.held, "calls/b")
	p.held["calls/ghost"] = 50
	p.mu.Unlock()
	answer, err := client.ListReservations(ctx, &providerv1.ListReservationsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*providerv1.Reservation{}
	for _, r := range answer.GetReservations() {
		got[r.GetCall()] = r
	}
	if len(got) != 3 {
		t.Fatalf("listed %v", answer.GetReservations())
	}
	if a := got["calls/a"]; a.GetSendingBytesPerSecond() != 100 || a.GetLink() != "links/only" || a.GetQos() == nil {
		t.Fatalf("calls/a: %v", a)
	}
	if b := got["calls/b"]; b.GetSendingBytesPerSecond() != 0 || b.GetQos().GetSending().GetTokenRateBytesPerSecond() != 200 {
		t.Fatalf("calls/b (forgotten by the books): %v", b)
	}
	if ghost := got["calls/ghost"]; ghost.GetQos() != nil || ghost.GetSendingBytesPerSecond() != 50 {
		t.Fatalf("calls/ghost (booked for no call): %v", ghost)
	}
	// Without the capability the books are not asked: QoS only.
	plain, _, _ := serve(t, newLedger(10_000))
	if _, err := plain.Restore(ctx, &providerv1.RestoreRequest{Calls: calls}); err != nil {
		t.Fatal(err)
	}
	answer, err = plain.ListReservations(ctx, &providerv1.ListReservationsRequest{})
	if err != nil || len(answer.GetReservations()) != 2 || answer.GetReservations()[0].GetSendingBytesPerSecond() != 0 {
		t.Fatalf("without reservation_listing: %v %v", answer, err)
	}
}
