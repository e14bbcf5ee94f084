package callqos_test

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/callqos/callqos/clients/go/callqos"
	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
	"github.com/callqos/callqos/clients/go/internal/testserver"
)

// addr is the real server every test in this package talks to (started once, in TestMain).
var addr string

func TestMain(m *testing.M) { testserver.Main(m, &addr) }

// newClient connects to the test server as principal and closes the client after the test.
func newClient(t *testing.T, target, principal string, opts ...callqos.Option) *callqos.Client {
	t.Helper()
	c, err := callqos.New(target, append([]callqos.Option{callqos.WithPrincipal(principal)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// connect makes a NEEDED call at rate bytes/s and drops it when the test ends.
func connect(t *testing.T, c *callqos.Client, rate uint64) *callqosv1.Call {
	t.Helper()
	call, err := c.CreateCall(testContext(t), &callqosv1.CreateCallRequest{Call: &callqosv1.Call{
		Destination:  "sip:bob@example.com",
		ServiceLevel: callqosv1.ServiceLevel_SERVICE_LEVEL_NEEDED,
		RequestedQos: callqos.ControlledLoad(rate),
	}})
	if err != nil {
		t.Fatalf("CreateCall(%d): %v", rate, err)
	}
	t.Cleanup(func() { c.DropCall(context.Background(), call.GetName()) })
	return call
}

func sendingRate(q *callqosv1.QosSpec) uint64 { return q.GetSending().GetTokenRateBytesPerSecond() }

// proxy forwards loopback TCP connections to a target and can cut them all at once, to break
// streams the way a network or server restart does.
type proxy struct {
	ln       net.Listener
	target   string
	mu       sync.Mutex
	conns    []net.Conn
	accepted int
}

func startProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			p.conns, p.accepted = append(p.conns, in, out), p.accepted+1
			p.mu.Unlock()
			go func() { io.Copy(out, in); out.Close() }()
			go func() { io.Copy(in, out); in.Close() }()
		}
	}()
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) connections() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}
