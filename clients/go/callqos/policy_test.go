package callqos_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/callqos/callqos/clients/go/callqos"
	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
)

// sharedPolicy is clients/service_config.json, the policy every callqos client applies.
const sharedPolicy = "../../service_config.json"

type policyFile struct {
	ServiceConfig struct {
		MethodConfig []struct {
			Name []struct {
				Service, Method string
			}
			RetryPolicy struct {
				MaxAttempts          int
				RetryableStatusCodes []string
			}
		}
	}
	WatchResume struct {
		InitialBackoff, MaxBackoff, HealthyAfter, GiveUpAfter string
		BackoffMultiplier                                     float64
		ResumableStatusCodes                                  []string
	}
}

func readPolicy(t *testing.T) policyFile {
	t.Helper()
	text, err := os.ReadFile(sharedPolicy)
	if err != nil {
		t.Fatal(err)
	}
	var p policyFile
	if err := json.Unmarshal(text, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

func maxAttempts(t *testing.T) int {
	mc := readPolicy(t).ServiceConfig.MethodConfig
	if len(mc) != 1 {
		t.Fatalf("%d methodConfig entries, want 1", len(mc))
	}
	return mc[0].RetryPolicy.MaxAttempts
}

func TestThePackagesPolicyIsTheSharedFile(t *testing.T) {
	shared, err := os.ReadFile(sharedPolicy)
	if err != nil {
		t.Fatal(err)
	}
	embedded, err := os.ReadFile("service_config.json")
	if err != nil || !bytes.Equal(shared, embedded) {
		t.Fatalf("service_config.json differs from %s (run make generate): %v", sharedPolicy, err)
	}
	p := readPolicy(t)
	if codes := p.ServiceConfig.MethodConfig[0].RetryPolicy.RetryableStatusCodes; !slices.Equal(codes, []string{"UNAVAILABLE"}) {
		t.Errorf("retryableStatusCodes = %v: only UNAVAILABLE is safe (never a QoS refusal)", codes)
	}
	r := p.WatchResume
	parse := func(s string) time.Duration {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	want := callqos.ResumePolicy{
		InitialBackoff: parse(r.InitialBackoff), MaxBackoff: parse(r.MaxBackoff), Multiplier: r.BackoffMultiplier,
		HealthyAfter: parse(r.HealthyAfter), GiveUpAfter: parse(r.GiveUpAfter),
	}
	for _, name := range r.ResumableStatusCodes {
		var c codes.Code
		if err := c.UnmarshalJSON([]byte(`"` + name + `"`)); err != nil {
			t.Fatal(err)
		}
		want.ResumableCodes = append(want.ResumableCodes, c)
	}
	got := callqos.DefaultResumePolicy()
	if got.InitialBackoff != want.InitialBackoff || got.MaxBackoff != want.MaxBackoff || got.Multiplier != want.Multiplier ||
		got.HealthyAfter != want.HealthyAfter || got.GiveUpAfter != want.GiveUpAfter ||
		!slices.Equal(got.ResumableCodes, want.ResumableCodes) {
		t.Errorf("DefaultResumePolicy() = %+v, the file says %+v", got, want)
	}
}

// fault fails the next `times` attempts of a method with `code`, before the request reaches
// the server, or after it (the server acted, its answer is lost).
type fault struct {
	code  codes.Code
	times int
	after bool
}

// front is a loopback gRPC server in front of the real one: it forwards calls (and the
// principal), fails the attempts its faults say, and records every attempt's request.
type front struct {
	callqosv1.UnimplementedCallQosServiceServer
	up       callqosv1.CallQosServiceClient
	addr     string
	mu       sync.Mutex
	faults   map[string]*fault
	attempts map[string][]proto.Message
}

func startFront(t *testing.T, upstream string) *front {
	conn, err := grpc.NewClient(upstream, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &front{
		up: callqosv1.NewCallQosServiceClient(conn), addr: ln.Addr().String(),
		faults: map[string]*fault{}, attempts: map[string][]proto.Message{},
	}
	s := grpc.NewServer()
	callqosv1.RegisterCallQosServiceServer(s, f)
	go s.Serve(ln)
	t.Cleanup(func() { s.Stop(); conn.Close() })
	return f
}

func (f *front) fail(method string, ft fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults[method] = &ft
}

func (f *front) requests(method string) []proto.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.attempts[method])
}

// attempt records req and says whether to fail it before or after forwarding.
func (f *front) attempt(method string, req proto.Message) (before, after error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attempts[method] = append(f.attempts[method], proto.Clone(req))
	ft := f.faults[method]
	if ft == nil || ft.times == 0 {
		return nil, nil
	}
	ft.times--
	if ft.after {
		return nil, status.Errorf(ft.code, "fault injected after %s reached the server", method)
	}
	return status.Errorf(ft.code, "fault injected before %s reached the server", method), nil
}

func forward[Req proto.Message, Resp any](f *front, ctx context.Context, method string, req Req,
	rpc func(context.Context, Req, ...grpc.CallOption) (Resp, error)) (Resp, error) {
	var zero Resp
	before, after := f.attempt(method, req)
	if before != nil {
		return zero, before
	}
	md, _ := metadata.FromIncomingContext(ctx)
	ctx = metadata.NewOutgoingContext(ctx, metadata.MD{callqos.PrincipalHeader: md.Get(callqos.PrincipalHeader)})
	resp, err := rpc(ctx, req)
	if err != nil {
		return zero, err // the server's status, details and all
	}
	if after != nil {
		return zero, after
	}
	return resp, nil
}

func (f *front) GetCall(ctx context.Context, r *callqosv1.GetCallRequest) (*callqosv1.Call, error) {
	return forward(f, ctx, "GetCall", r, f.up.GetCall)
}

func (f *front) ListCalls(ctx context.Context, r *callqosv1.ListCallsRequest) (*callqosv1.ListCallsResponse, error) {
	return forward(f, ctx, "ListCalls", r, f.up.ListCalls)
}

func (f *front) CreateCall(ctx context.Context, r *callqosv1.CreateCallRequest) (*callqosv1.Call, error) {
	return forward(f, ctx, "CreateCall", r, f.up.CreateCall)
}

func (f *front) RenegotiateCall(ctx context.Context, r *callqosv1.RenegotiateCallRequest) (*callqosv1.Call, error) {
	return forward(f, ctx, "RenegotiateCall", r, f.up.RenegotiateCall)
}

func (f *front) DropCall(ctx context.Context, r *callqosv1.DropCallRequest) (*callqosv1.Call, error) {
	return forward(f, ctx, "DropCall", r, f.up.DropCall)
}

func (f *front) ListProviders(ctx context.Context, r *callqosv1.ListProvidersRequest) (*callqosv1.ListProvidersResponse, error) {
	return forward(f, ctx, "ListProviders", r, f.up.ListProviders)
}

// WatchEvents is always UNAVAILABLE: a server that never comes back.
func (f *front) WatchEvents(r *callqosv1.WatchEventsRequest, _ grpc.ServerStreamingServer[callqosv1.WatchEventsResponse]) error {
	f.attempt("WatchEvents", r)
	return status.Error(codes.Unavailable, "fault injected: the server stays down")
}

func TestReadRetriedOnUnavailable(t *testing.T) {
	f := startFront(t, addr)
	n := maxAttempts(t)
	f.fail("ListProviders", fault{code: codes.Unavailable, times: n - 1})
	resp, err := newClient(t, f.addr, "alice").ListProviders(testContext(t), &callqosv1.ListProvidersRequest{})
	if err != nil || len(resp.GetProviders()) == 0 {
		t.Fatalf("ListProviders after %d UNAVAILABLE attempts: %v, %v", n-1, resp, err)
	}
	if got := len(f.requests("ListProviders")); got != n {
		t.Errorf("%d attempts, want %d (maxAttempts)", got, n)
	}
}

func TestRetriesStopAtMaxAttempts(t *testing.T) {
	f := startFront(t, addr)
	n := maxAttempts(t)
	f.fail("GetCall", fault{code: codes.Unavailable, times: n + 3})
	_, err := newClient(t, f.addr, "alice").GetCall(testContext(t), "calls/anything")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("GetCall failing every time: %v, want UNAVAILABLE", err)
	}
	if got := len(f.requests("GetCall")); got != n {
		t.Errorf("%d attempts, want %d (maxAttempts)", got, n)
	}
}

// TestCreateRetriedWithTheSameRequestID: the server makes the call, its answer is lost, the
// channel retries; the request_id the client added makes the server answer with the first
// outcome instead of making a second call. The caller set no request_id.
func TestCreateRetriedWithTheSameRequestID(t *testing.T) {
	f := startFront(t, addr)
	c := newClient(t, f.addr, "alice")
	ctx := testContext(t)
	f.fail("CreateCall", fault{code: codes.Unavailable, times: 1, after: true})
	req := &callqosv1.CreateCallRequest{Call: &callqosv1.Call{
		Destination: "sip:retried@example.com", RequestedQos: callqos.ControlledLoad(1000),
	}}
	call, err := c.CreateCall(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.DropCall(context.Background(), call.GetName()) })
	if req.GetRequestId() != "" {
		t.Error("the caller's request was changed")
	}
	sent := f.requests("CreateCall")
	if len(sent) != 2 || sent[0].(*callqosv1.CreateCallRequest).GetRequestId() == "" || !proto.Equal(sent[0], sent[1]) {
		t.Fatalf("attempts = %v, want two with the same request_id", sent)
	}
	list, err := c.ListCalls(ctx, &callqosv1.ListCallsRequest{PageSize: 500})
	if err != nil {
		t.Fatal(err)
	}
	var made []string
	for _, other := range list.GetCalls() {
		if other.GetDestination() == "sip:retried@example.com" {
			made = append(made, other.GetName())
		}
	}
	if !slices.Equal(made, []string{call.GetName()}) {
		t.Errorf("calls to sip:retried@example.com = %v, want only %s", made, call.GetName())
	}
}

func TestRenegotiationRetriedWithTheSameRequestID(t *testing.T) {
	f := startFront(t, addr)
	c := newClient(t, f.addr, "alice")
	call := connect(t, c, 1000)
	f.fail("RenegotiateCall", fault{code: codes.Unavailable, times: 1, after: true})
	changed, err := c.RenegotiateCall(testContext(t), &callqosv1.RenegotiateCallRequest{
		Name: call.GetName(), Qos: callqos.ControlledLoad(2000),
	})
	if err != nil || sendingRate(changed.GetGrantedQos()) != 2000 {
		t.Fatalf("RenegotiateCall: %v, %v", changed, err)
	}
	sent := f.requests("RenegotiateCall")
	if len(sent) != 2 || sent[0].(*callqosv1.RenegotiateCallRequest).GetRequestId() == "" || !proto.Equal(sent[0], sent[1]) {
		t.Fatalf("attempts = %v, want two with the same request_id", sent)
	}
}

func TestQosRefusalIsNotRetried(t *testing.T) {
	f := startFront(t, addr)
	_, err := newClient(t, f.addr, "alice").CreateCall(testContext(t), &callqosv1.CreateCallRequest{Call: &callqosv1.Call{
		Destination: "sip:refused@example.com", ServiceLevel: callqosv1.ServiceLevel_SERVICE_LEVEL_NEEDED,
		RequestedQos: callqos.ControlledLoad(2 * linkCapacity),
	}})
	if _, ok := callqos.IsQosUnavailable(err); !ok || status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("CreateCall beyond capacity: %v, want a QoS refusal", err)
	}
	if got := len(f.requests("CreateCall")); got != 1 {
		t.Errorf("%d attempts of a refused CreateCall, want 1", got)
	}
}

// TestWatchGivesUpAfterTheBound: a watch whose server stays UNAVAILABLE reconnects with backoff
// and gives up once failures have gone on for GiveUpAfter, with the last error.
func TestWatchGivesUpAfterTheBound(t *testing.T) {
	f := startFront(t, addr)
	w := newClient(t, f.addr, "alice").NewWatcher(&callqosv1.WatchEventsRequest{AfterSequence: proto.Uint64(0)})
	w.Resume.GiveUpAfter, w.Resume.MaxBackoff = time.Second, 200*time.Millisecond
	start := time.Now()
	var last error
	for _, err := range w.Events(testContext(t)) {
		last = err
		if err == nil {
			t.Fatal("an event from a server that is down")
		}
	}
	took := time.Since(start)
	var e *callqos.Error
	if !errors.As(last, &e) || e.Code() != codes.Unavailable {
		t.Fatalf("the watch ended with %v, want UNAVAILABLE", last)
	}
	if took < time.Second || took > 10*time.Second {
		t.Errorf("gave up after %v, want just over GiveUpAfter (1s)", took)
	}
	if n := len(f.requests("WatchEvents")); n < 3 {
		t.Errorf("%d attempts in %v, want several (backoff at most 200ms)", n, took)
	}
}

// TestWatchEndsOnAnErrorResumingCannotFix: CURSOR_UNKNOWN is final, not retried.
func TestWatchEndsOnAnErrorResumingCannotFix(t *testing.T) {
	c := newClient(t, addr, "alice")
	for _, err := range c.Watch(testContext(t), &callqosv1.WatchEventsRequest{AfterSequence: proto.Uint64(1 << 60)}) {
		var e *callqos.Error
		if !errors.As(err, &e) || e.Code() != codes.OutOfRange || e.Code() != callqos.CodeOf(callqosv1.ErrorReason_ERROR_REASON_CURSOR_UNKNOWN) {
			t.Fatalf("watch from beyond the newest event: %v, want OUT_OF_RANGE (CURSOR_UNKNOWN)", err)
		}
		return
	}
	t.Fatal("the watch ended without an error")
}
