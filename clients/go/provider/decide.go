package provider

import (
	"context"
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	providerv1 "github.com/callqos/callqos/clients/go/gen/callqos/provider/v1"
	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
)

// traceContext reads the caller's trace context a request on the Decide stream carries.
var traceContext = propagation.TraceContext{}

// Decide serves Admit, Renegotiate and Release on one stream: each request answered by the
// method it names, concurrently (so a Release can cancel an Admit still being decided), under
// its own deadline and in its caller's trace; answers written as they are ready.
func (s *Server) Decide(stream grpc.BidiStreamingServer[providerv1.DecideRequest, providerv1.DecideResponse]) error {
	var writing sync.Mutex
	var answering sync.WaitGroup
	defer answering.Wait()
	for {
		request, err := stream.Recv()
		if err != nil {
			return nil // the server closed its side, or the stream broke: either way, done
		}
		claim := s.claim(request) // in the stream's order, before any later request is answered
		answering.Add(1)
		go func() {
			defer answering.Done()
			ctx := stream.Context()
			if claim != nil {
				ctx = context.WithValue(ctx, claimKey{}, claim)
				defer s.unclaim(claim)
			}
			response := s.decideOne(ctx, request)
			writing.Lock()
			defer writing.Unlock()
			_ = stream.Send(response)
		}()
	}
}

func (s *Server) decideOne(parent context.Context, request *providerv1.DecideRequest) *providerv1.DecideResponse {
	ctx := traceContext.Extract(parent, propagation.MapCarrier{"traceparent": request.GetTraceparent(), "tracestate": request.GetTracestate()})
	if timeout := request.GetTimeout(); timeout != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout.AsDuration())
		defer cancel()
	}
	answer := &providerv1.DecideResponse{Id: request.GetId()}
	var err error
	switch r := request.GetRequest().(type) {
	case *providerv1.DecideRequest_Admit:
		ctx, span := startSpan(ctx, "Admit")
		var out *providerv1.AdmitResponse
		out, err = s.Admit(ctx, r.Admit)
		span.End()
		answer.Response = &providerv1.DecideResponse_Admit{Admit: out}
	case *providerv1.DecideRequest_Renegotiate:
		ctx, span := startSpan(ctx, "Renegotiate")
		var out *providerv1.RenegotiateResponse
		out, err = s.Renegotiate(ctx, r.Renegotiate)
		span.End()
		answer.Response = &providerv1.DecideResponse_Renegotiate{Renegotiate: out}
	case *providerv1.DecideRequest_Release:
		ctx, span := startSpan(ctx, "Release")
		var out *providerv1.ReleaseResponse
		out, err = s.Release(ctx, r.Release)
		span.End()
		answer.Response = &providerv1.DecideResponse_Release{Release: out}
	default:
		err = status.Error(codes.InvalidArgument, "an empty request")
	}
	if err != nil {
		answer.Response = &providerv1.DecideResponse_Failure{Failure: failureOf(err)}
	}
	return answer
}

// startSpan starts a server span for one request on the stream, with the global tracer
// provider (a no-op unless the provider's program sets one): spans the provider starts from
// ctx are its children, in the caller's trace.
func startSpan(ctx context.Context, method string) (context.Context, trace.Span) {
	return otel.Tracer("github.com/callqos/callqos/clients/go/provider").Start(ctx,
		"callqos.provider.v1.ProviderService/"+method, trace.WithSpanKind(trace.SpanKindServer))
}

// failureOf is the DecideFailure for a method's error: its status, with the provider's
// objections to qos.provider_specific.
func failureOf(err error) *providerv1.DecideFailure {
	st := status.Convert(err)
	failure := &providerv1.DecideFailure{Code: callqosv1.GrpcCode(st.Code()), Message: st.Message()}
	for _, detail := range st.Details() {
		if bad, ok := detail.(*errdetails.BadRequest); ok {
			for _, violation := range bad.GetFieldViolations() {
				if violation.GetField() == "qos.provider_specific" {
					failure.ProviderSpecificViolations = append(failure.ProviderSpecificViolations, violation.GetDescription())
				}
			}
		}
	}
	return failure
}
