package provider

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	providerv1 "github.com/callqos/callqos/clients/go/gen/callqos/provider/v1"
)

// The handshake with a server that launches the provider (see the comments of
// protos/callqos/provider/v1/provider_service.proto).
const (
	ProtocolVersion = 1
	Magic           = "CALLQOS_PROVIDER"
	MagicCookieEnv  = "CALLQOS_PROVIDER_MAGIC_COOKIE"
	MagicCookie     = "d3c1c0b5-callqos-provider" // not a secret: it tells a launched provider from one run by hand
	SocketEnv       = "CALLQOS_PROVIDER_SOCKET"
	// HealthService is the grpc.health.v1 service name the provider reports SERVING under.
	HealthService = "callqos.provider.v1.ProviderService"
)

// ErrNotLaunched is what Serve returns when no server launched the provider and no address to
// listen on was given.
var ErrNotLaunched = errors.New("not launched by a callqos server, and no address to listen on")

// Options say where and how Serve serves.
type Options struct {
	// Listen is "unix:///path" or "host:port". Empty: where the launching server says
	// ($CALLQOS_PROVIDER_SOCKET).
	Listen string
	// PortFile, if set, receives the bound TCP port once serving.
	PortFile string
	// Logger for the kit's own lines (default: JSON lines on stderr, which a launching server
	// forwards into its own log).
	Logger *slog.Logger
	// Handshake is where the handshake line goes (default os.Stdout).
	Handshake io.Writer
	// StopGrace is how long in-flight requests get when the provider stops (default 2s).
	StopGrace time.Duration
	// Ready, if set, is called with the server and its address once serving.
	Ready func(server *Server, address string)
}

// Launched reports whether a callqos server started this process (the magic cookie is set).
func Launched() bool { return os.Getenv(MagicCookieEnv) == MagicCookie }

// Serve serves p until ctx ends, SIGTERM or SIGINT arrives, or — when a server launched the
// provider — the server goes away (its end of stdin closes).
func Serve(ctx context.Context, p Provider, opts Options) error {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	launched := Launched()
	address := opts.Listen
	if address == "" && launched {
		address = "unix://" + os.Getenv(SocketEnv)
	}
	if address == "" || address == "unix://" {
		return ErrNotLaunched
	}
	network, where := "tcp", address
	if strings.HasPrefix(address, "unix:") {
		network, where = "unix", "/"+strings.TrimLeft(strings.TrimPrefix(address, "unix:"), "/")
		_ = os.Remove(where) // a socket left behind by a killed predecessor
	}
	listener, err := net.Listen(network, where)
	if err != nil {
		return fmt.Errorf("provider: listen on %s: %w", address, err)
	}
	server, err := NewServer(p, logger)
	if err != nil {
		listener.Close()
		return err
	}
	grpcServer := grpc.NewServer(
		grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithPropagators(
			propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		))),
		grpc.MaxRecvMsgSize(64<<20),
		grpc.MaxSendMsgSize(64<<20),
	)
	providerv1.RegisterProviderServiceServer(grpcServer, server)
	healthServer := health.NewServer()
	healthServer.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthServer.SetServingStatus(HealthService, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(grpcServer, healthServer)
	served := make(chan error, 1)
	go func() { served <- grpcServer.Serve(listener) }()

	announced := where
	if network == "tcp" {
		announced = listener.Addr().String()
		if opts.PortFile != "" {
			port := strconv.Itoa(listener.Addr().(*net.TCPAddr).Port)
			if err := writeAtomically(opts.PortFile, port+"\n"); err != nil {
				grpcServer.Stop()
				return err
			}
		}
	}
	logger.Info("serving", "address", announced, "instance", server.InstanceID(), "provider", server.info.DisplayName)
	if opts.Ready != nil {
		opts.Ready(server, announced)
	}
	handshake := opts.Handshake
	if handshake == nil {
		handshake = os.Stdout
	}
	// Last: the server dials as soon as it reads this line.
	fmt.Fprintf(handshake, "%s|%d|%s|%s|grpc\n", Magic, ProtocolVersion, network, announced)

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	gone := make(chan struct{})
	if launched {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin) // returns when the server's end closes
			close(gone)
		}()
	}
	select {
	case <-ctx.Done():
	case <-gone:
		logger.Info("the server is gone (stdin closed)")
	case err := <-served:
		return err
	}
	logger.Info("stopping")
	healthServer.Shutdown()
	grace := opts.StopGrace
	if grace == 0 {
		grace = 2 * time.Second
	}
	stopped := make(chan struct{})
	go func() { grpcServer.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(grace):
		grpcServer.Stop()
	}
	if network == "unix" {
		_ = os.Remove(where)
	}
	return nil
}

// Main is the whole main function of a provider program: flags -listen and -port-file, JSON
// logs on stderr, Serve until stopped, and the exit status (2 with instructions when run by
// hand without -listen).
func Main(p Provider) {
	listen := flag.String("listen", "", `where to listen: "unix:///path/provider.sock" or "127.0.0.1:7000" (default: where the launching callqos server says)`)
	portFile := flag.String("port-file", "", "write the bound TCP port here once serving")
	flag.Parse()
	err := Serve(context.Background(), p, Options{Listen: *listen, PortFile: *portFile})
	if errors.Is(err, ErrNotLaunched) {
		fmt.Fprintf(os.Stderr, `%s: this is a callqos QoS provider. A callqos server launches it:

    [providers.my-provider]
    plugin = "remote"
    command = ["%s"]

To run it yourself, give it an address and point the server's endpoint at it:

    %s -listen unix:///tmp/my-provider.sock
`, os.Args[0], os.Args[0], os.Args[0])
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func writeAtomically(path, text string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
