// Package callqos is a small client for the callqos.v1.CallQosService API.
//
// It wraps the generated stubs in gen/callqos/v1 with what every caller otherwise writes
// again: TLS and mTLS (WithTLS, TLSConfig), a bearer token from a refreshing source on every
// request (WithTokenSource, FileToken), a default deadline on unary calls, the caller's
// principal on every request (development servers), errors
// decoded from google.rpc.Status details (see Error and QosUnavailableError), W3C trace
// context propagation through otelgrpc, and an event watch that resumes from the last
// sequence number it delivered when the stream breaks (see Client.Watch).
//
// The generated client stays reachable through Client.API for anything not wrapped here.
package callqos

import (
	"context"
	cryptorand "crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
)

// PrincipalHeader is the request metadata key that names the caller. Only a call's owner may
// renegotiate or drop it; the server uses "anonymous" when the header is absent.
const PrincipalHeader = "x-callqos-principal"

// DefaultTimeout is the deadline given to a unary call whose context has none.
const DefaultTimeout = 10 * time.Second

type options struct {
	principal      string
	timeout        time.Duration
	tracerProvider trace.TracerProvider
	tracing        bool
	dialOptions    []grpc.DialOption
	tls            *tls.Config
	tokens         TokenSource
}

// An Option configures New.
type Option func(*options)

// WithPrincipal sets the x-callqos-principal metadata sent with every request.
func WithPrincipal(principal string) Option { return func(o *options) { o.principal = principal } }

// WithTimeout sets the deadline for unary calls whose context has none (DefaultTimeout if
// not given; 0 means no default deadline).
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithTracing makes a client span for every RPC with otelgrpc and sends its W3C trace
// context (the traceparent header) to the server, so the server's span joins the caller's
// trace. A nil provider means the global one (otel.GetTracerProvider).
func WithTracing(tp trace.TracerProvider) Option {
	return func(o *options) { o.tracing, o.tracerProvider = true, tp }
}

// WithDialOptions adds gRPC dial options (transport credentials, keepalive, interceptors).
// Without transport credentials the connection is plaintext, as for a loopback server.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOptions = append(o.dialOptions, opts...) }
}

// Client calls one callqos server. It is safe for concurrent use.
type Client struct {
	conn      *grpc.ClientConn
	api       callqosv1.CallQosServiceClient
	principal string
	timeout   time.Duration
}

// New connects (lazily, as grpc.NewClient does) to target, e.g. "127.0.0.1:50051" or
// "dns:///callqos.example:443".
func New(target string, opts ...Option) (*Client, error) {
	o := options{timeout: DefaultTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	transport := insecure.NewCredentials()
	if o.tls != nil {
		transport = credentials.NewTLS(o.tls)
	}
	if o.tokens != nil && o.tls == nil && !isLoopback(target) {
		return nil, fmt.Errorf("callqos: a bearer token would cross the network to %s in the clear: use WithTLS", target)
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(transport),
		// The retry policy all four clients share (clients/service_config.json).
		grpc.WithDefaultServiceConfig(serviceConfig),
		// Before any retry: every attempt of a create or renegotiation carries the same id.
		grpc.WithChainUnaryInterceptor(withRequestIDs),
	}
	if o.tracing {
		handlerOpts := []otelgrpc.Option{otelgrpc.WithPropagators(propagation.TraceContext{})}
		if o.tracerProvider != nil {
			handlerOpts = append(handlerOpts, otelgrpc.WithTracerProvider(o.tracerProvider))
		}
		dial = append(dial, grpc.WithStatsHandler(otelgrpc.NewClientHandler(handlerOpts...)))
	}
	if o.tokens != nil {
		dial = append(dial, grpc.WithPerRPCCredentials(bearer{source: o.tokens, secure: o.tls != nil}))
	}
	dial = append(dial, o.dialOptions...)
	conn, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, err
	}
	return &Client{
		conn: conn, api: callqosv1.NewCallQosServiceClient(conn),
		principal: o.principal, timeout: o.timeout,
	}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// API is the generated client on the same connection, for methods this package does not
// wrap. It sends no principal and sets no deadline by itself.
func (c *Client) API() callqosv1.CallQosServiceClient { return c.api }

// outgoing adds the principal to ctx and, for unary calls, the default deadline.
func (c *Client) outgoing(ctx context.Context, unary bool) (context.Context, context.CancelFunc) {
	if c.principal != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, PrincipalHeader, c.principal)
	}
	if _, ok := ctx.Deadline(); unary && !ok && c.timeout > 0 {
		return context.WithTimeout(ctx, c.timeout)
	}
	return ctx, func() {}
}

// unary runs one unary RPC with the client's metadata and deadline, decoding its error.
func unary[Req, Resp any](c *Client, ctx context.Context, req Req,
	rpc func(context.Context, Req, ...grpc.CallOption) (Resp, error)) (Resp, error) {
	ctx, cancel := c.outgoing(ctx, true)
	defer cancel()
	resp, err := rpc(ctx, req)
	return resp, decodeError(err)
}

// CreateCall makes a call. A refused QoS at SERVICE_LEVEL_NEEDED fails with a
// *QosUnavailableError carrying the provider's counter-offer. Without a request_id, one is
// generated, so the call can be retried safely (UNAVAILABLE is retried automatically).
func (c *Client) CreateCall(ctx context.Context, req *callqosv1.CreateCallRequest) (*callqosv1.Call, error) {
	return unary(c, ctx, req, c.api.CreateCall)
}

// GetCall gets a call by name ("calls/{call}").
func (c *Client) GetCall(ctx context.Context, name string) (*callqosv1.Call, error) {
	return unary(c, ctx, &callqosv1.GetCallRequest{Name: name}, c.api.GetCall)
}

// ListCalls lists one page of calls.
func (c *Client) ListCalls(ctx context.Context, req *callqosv1.ListCallsRequest) (*callqosv1.ListCallsResponse, error) {
	return unary(c, ctx, req, c.api.ListCalls)
}

// RenegotiateCall changes a connected call's QoS. On refusal the error is a
// *QosUnavailableError and the call keeps its previous QoS. Without a request_id, one is
// generated, as for CreateCall.
func (c *Client) RenegotiateCall(ctx context.Context, req *callqosv1.RenegotiateCallRequest) (*callqosv1.Call, error) {
	return unary(c, ctx, req, c.api.RenegotiateCall)
}

// DropCall drops a call and releases what it reserved.
func (c *Client) DropCall(ctx context.Context, name string) (*callqosv1.Call, error) {
	return unary(c, ctx, &callqosv1.DropCallRequest{Name: name}, c.api.DropCall)
}

// ExtendCall renews a call's lease (owner only): it then ends req.LeaseDuration (nil: the
// call's own lease_duration) after now. Too late fails with reason LEASE_EXPIRED (the call is
// disconnected); a call without a lease with CALL_NOT_LEASED. Without a request_id, one is
// generated, so a retried renewal extends once. See KeepAlive for renewing it in the background.
func (c *Client) ExtendCall(ctx context.Context, req *callqosv1.ExtendCallRequest) (*callqosv1.Call, error) {
	return unary(c, ctx, req, c.api.ExtendCall)
}

// CreateLine opens a line (lineOpen): calls made to req.Line.Address are offered to this
// client's principal, its owner. ALREADY_EXISTS (ADDRESS_IN_USE) while another line is open for
// the address. Without a request_id, one is generated, so it can be retried safely.
func (c *Client) CreateLine(ctx context.Context, req *callqosv1.CreateLineRequest) (*callqosv1.Line, error) {
	return unary(c, ctx, req, c.api.CreateLine)
}

// GetLine gets a line by name ("lines/{line}").
func (c *Client) GetLine(ctx context.Context, name string) (*callqosv1.Line, error) {
	return unary(c, ctx, &callqosv1.GetLineRequest{Name: name}, c.api.GetLine)
}

// ListLines lists one page of lines (newest first; req.Filter on state, address, owner).
func (c *Client) ListLines(ctx context.Context, req *callqosv1.ListLinesRequest) (*callqosv1.ListLinesResponse, error) {
	return unary(c, ctx, req, c.api.ListLines)
}

// CloseLine closes a line (owner only): calls still ringing on it end NO_ANSWER.
func (c *Client) CloseLine(ctx context.Context, name string) (*callqosv1.Line, error) {
	return unary(c, ctx, &callqosv1.CloseLineRequest{Name: name}, c.api.CloseLine)
}

// AnswerCall answers an offered call (lineAnswer). req.Qos, in the answering call's own terms,
// may only lower the offer; nil accepts it as offered (a direction left out, or
// SERVICE_TYPE_NO_CHANGE, keeps that direction as offered). At NEEDED an answer below the caller's request fails the call with a
// *QosUnavailableError. Without a request_id, one is generated, so it can be retried safely.
func (c *Client) AnswerCall(ctx context.Context, req *callqosv1.AnswerCallRequest) (*callqosv1.Call, error) {
	return unary(c, ctx, req, c.api.AnswerCall)
}

// RejectCall rejects an offered call: both ends disconnect REJECTED.
func (c *Client) RejectCall(ctx context.Context, name string) (*callqosv1.Call, error) {
	return unary(c, ctx, &callqosv1.RejectCallRequest{Name: name}, c.api.RejectCall)
}

// ListProviders lists one page of providers.
func (c *Client) ListProviders(ctx context.Context, req *callqosv1.ListProvidersRequest) (*callqosv1.ListProvidersResponse, error) {
	return unary(c, ctx, req, c.api.ListProviders)
}

// withRequestIDs gives every CreateCall, RenegotiateCall, ExtendCall, CreateLine, AnswerCall and
// RejectCall on the connection, including those made through API(), a request_id (AIP-155) when the caller
// set none. The service config may then retry them: a retry whose first attempt did reach the
// server gets that attempt's outcome back instead of making a second call, renegotiating or
// answering twice. The caller's message is not changed; a copy is sent.
func withRequestIDs(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
	invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	switch r := req.(type) {
	case *callqosv1.CreateCallRequest:
		req = withID(r, r.GetRequestId(), func(m *callqosv1.CreateCallRequest) { m.RequestId = newRequestID() })
	case *callqosv1.RenegotiateCallRequest:
		req = withID(r, r.GetRequestId(), func(m *callqosv1.RenegotiateCallRequest) { m.RequestId = newRequestID() })
	case *callqosv1.ExtendCallRequest:
		req = withID(r, r.GetRequestId(), func(m *callqosv1.ExtendCallRequest) { m.RequestId = newRequestID() })
	case *callqosv1.CreateLineRequest:
		req = withID(r, r.GetRequestId(), func(m *callqosv1.CreateLineRequest) { m.RequestId = newRequestID() })
	case *callqosv1.AnswerCallRequest:
		req = withID(r, r.GetRequestId(), func(m *callqosv1.AnswerCallRequest) { m.RequestId = newRequestID() })
	case *callqosv1.RejectCallRequest:
		req = withID(r, r.GetRequestId(), func(m *callqosv1.RejectCallRequest) { m.RequestId = newRequestID() })
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// withID is r itself when it has a request_id (id), else a copy given one by set.
func withID[M proto.Message](r M, id string, set func(M)) M {
	if id != "" {
		return r
	}
	r = proto.CloneOf(r)
	set(r)
	return r
}

// newRequestID is a random (version 4) UUID.
func newRequestID() string {
	var b [16]byte
	_, _ = cryptorand.Read(b[:]) // never fails (crypto/rand.Read panics rather than return an error)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// IsQosUnavailable reports whether err is a QoS refusal, and returns it.
func IsQosUnavailable(err error) (*QosUnavailableError, bool) {
	var qe *QosUnavailableError
	ok := errors.As(err, &qe)
	return qe, ok
}
