package callqos_test

import (
	"net"
	"regexp"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/callqos/callqos/clients/go/callqos"
	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
)

var traceparent = regexp.MustCompile(`^00-([0-9a-f]{32})-([0-9a-f]{16})-01$`)

func tracedClient(t *testing.T, target string) (*callqos.Client, *tracetest.SpanRecorder) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { tp.Shutdown(t.Context()) })
	return newClient(t, target, "alice", callqos.WithTracing(tp)), rec
}

// TestTraceContextOnTheWire checks, at a loopback gRPC server that records request metadata,
// that a traced client sends a W3C traceparent naming its own client span, and the principal.
func TestTraceContextOnTheWire(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan metadata.MD, 1)
	srv := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
		md, _ := metadata.FromIncomingContext(stream.Context())
		got <- md
		return status.Error(codes.Unimplemented, "recorder")
	}))
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)

	c, rec := tracedClient(t, ln.Addr().String())
	_, err = c.GetCall(testContext(t), "calls/x")
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("GetCall at the recorder: %v", err)
	}
	md := <-got
	if p := md.Get(callqos.PrincipalHeader); len(p) != 1 || p[0] != "alice" {
		t.Errorf("%s = %v", callqos.PrincipalHeader, p)
	}
	tp := md.Get("traceparent")
	if len(tp) != 1 || !traceparent.MatchString(tp[0]) {
		t.Fatalf("traceparent = %v", tp)
	}
	spans := rec.Ended()
	if len(spans) != 1 || spans[0].Name() != "callqos.v1.CallQosService/GetCall" {
		t.Fatalf("client spans = %v", spans)
	}
	sc := spans[0].SpanContext()
	m := traceparent.FindStringSubmatch(tp[0])
	if m[1] != sc.TraceID().String() || m[2] != sc.SpanID().String() {
		t.Errorf("traceparent %s does not name the client span %s/%s", tp[0], sc.TraceID(), sc.SpanID())
	}
}

// TestTraceSharedWithServer: the server stamps each event with the trace id of the operation
// that caused it (QosEvent.trace_id, from the server span that continued the client's
// traceparent), so the QOS_GRANTED event of a traced CreateCall carries the client span's trace.
func TestTraceSharedWithServer(t *testing.T) {
	c, rec := tracedClient(t, addr)
	call := connect(t, c, 1000)
	var traceID string
	for _, s := range rec.Ended() {
		if s.Name() == "callqos.v1.CallQosService/CreateCall" {
			traceID = s.SpanContext().TraceID().String()
		}
	}
	if traceID == "" {
		t.Fatal("no client span for CreateCall")
	}
	for ev, err := range c.Watch(testContext(t), &callqosv1.WatchEventsRequest{
		AfterSequence: proto.Uint64(0), Call: call.GetName(),
	}) {
		if err != nil {
			t.Fatal(err)
		}
		if ev.GetTraceId() != traceID {
			t.Fatalf("QOS_GRANTED event trace_id %q, client span trace %s", ev.GetTraceId(), traceID)
		}
		return
	}
}
