package callqos

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// AuthorizationHeader carries a bearer token ("Bearer <JWT>") on every request.
const AuthorizationHeader = "authorization"

// Environment variables of the clients for TLS and tokens (the same names as the Python CLI's).
const (
	TLSCAEnv     = "CALLQOS_TLS_CA"
	TLSCertEnv   = "CALLQOS_TLS_CLIENT_CERT"
	TLSKeyEnv    = "CALLQOS_TLS_CLIENT_KEY"
	TokenEnv     = "CALLQOS_TOKEN"
	TokenFileEnv = "CALLQOS_TOKEN_FILE"
)

// A TokenSource returns the bearer token to send now. It is asked before every RPC, so it can
// refresh the token whenever it likes (see FileToken and StaticToken).
type TokenSource func(ctx context.Context) (string, error)

// StaticToken always returns token.
func StaticToken(token string) TokenSource {
	return func(context.Context) (string, error) { return token, nil }
}

// FileToken returns the token in path, read again whenever the file changes (its modification
// time or size), as a rotated Kubernetes projected service-account token does.
func FileToken(path string) TokenSource {
	var (
		mu    sync.Mutex
		seen  time.Time
		size  int64
		token string
	)
	return func(context.Context) (string, error) {
		info, err := os.Stat(path)
		if err != nil {
			return "", err
		}
		mu.Lock()
		defer mu.Unlock()
		if !info.ModTime().Equal(seen) || info.Size() != size || token == "" {
			data, err := os.ReadFile(path)
			if err != nil {
				return "", err
			}
			token, seen, size = strings.TrimSpace(string(data)), info.ModTime(), info.Size()
		}
		return token, nil
	}
}

// TLSConfig is a TLS configuration trusting the CA certificates in caFile (the system's when
// ""), presenting the client certificate certFile/keyFile when given (mTLS).
func TLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", caFile)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("a client certificate needs its key, and a key its certificate")
	}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// WithTLS connects over TLS with cfg (see TLSConfig).
func WithTLS(cfg *tls.Config) Option { return func(o *options) { o.tls = cfg } }

// WithTokenSource sends `authorization: Bearer <token>` with every RPC, the token asked of
// source each time. Tokens are sent only over TLS, or to a loopback address.
func WithTokenSource(source TokenSource) Option { return func(o *options) { o.tokens = source } }

// bearer is the per-RPC credential of a TokenSource.
type bearer struct {
	source TokenSource
	secure bool
}

func (b bearer) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	token, err := b.source(ctx)
	if err != nil {
		return nil, fmt.Errorf("callqos: token source: %w", err)
	}
	return map[string]string{AuthorizationHeader: "Bearer " + token}, nil
}

// RequireTransportSecurity: gRPC refuses to send the token over a plaintext connection, except
// to loopback (checked in New).
func (b bearer) RequireTransportSecurity() bool { return b.secure }

// isLoopback reports whether target ("host:port", "dns:///host:port", "unix:...") stays on
// this machine.
func isLoopback(target string) bool {
	if strings.HasPrefix(target, "unix:") {
		return true
	}
	target = strings.TrimPrefix(target, "dns:///")
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
