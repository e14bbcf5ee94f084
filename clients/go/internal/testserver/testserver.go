// Package testserver runs a real callqos server on a free loopback port for tests and
// examples: `callqos serve --listen 127.0.0.1:0 --port-file F --storage memory`.
//
// The server program is $CALLQOS_BIN, else the repository's .venv/bin/callqos (made by
// `make venv` at the top). Set CALLQOS_TARGET to use a server that is already running instead
// (the address convention: callqos.DefaultTarget).
package testserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Server is a running callqos server.
type Server struct {
	// Addr is host:port on loopback.
	Addr   string
	cmd    *exec.Cmd
	dir    string
	exited chan error
}

// Start starts a server and waits until it is serving (it writes its port file then).
func Start() (*Server, error) {
	if addr := os.Getenv("CALLQOS_TARGET"); addr != "" {
		return &Server{Addr: addr}, nil
	}
	return StartWith()
}

// StartWith starts a server of its own (never CALLQOS_TARGET's) with these further arguments,
// e.g. "--config", file.
func StartWith(args ...string) (*Server, error) {
	bin, err := findBinary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "callqos-go-test-")
	if err != nil {
		return nil, err
	}
	return start(bin, dir, append([]string{"--storage", "memory"}, args...)...)
}

// Secure is a server that requires TLS with a client certificate (mTLS) and accepts bearer
// tokens, with the files made for it: ca, client_cert, client_key, alice_token, bob_token (see
// `python -m callqos.server.testpki`). Tokens are of tenant acme; the client certificate's
// principal, spiffe://callqos.test/client, is of tenant acme too.
type Secure struct {
	*Server
	Files map[string]string
}

// StartSecure makes a CA, certificates, a JWKS and tokens with the server's own test kit, and
// starts a server that uses them.
func StartSecure() (*Secure, error) {
	bin, err := findBinary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "callqos-go-tls-test-")
	if err != nil {
		return nil, err
	}
	python := filepath.Join(filepath.Dir(bin), "python")
	out, err := exec.Command(python, "-m", "callqos.server.testpki", filepath.Join(dir, "pki")).Output()
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("making the test PKI: %v", err)
	}
	files := map[string]string{}
	if err := json.Unmarshal(out, &files); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s, err := start(bin, dir, "--config", files["config"])
	if err != nil {
		return nil, err
	}
	return &Secure{Server: s, Files: files}, nil
}

func start(bin, dir string, args ...string) (*Server, error) {
	portFile := filepath.Join(dir, "port")
	cmd := exec.Command(bin, append([]string{"serve", "--listen", "127.0.0.1:0", "--port-file", portFile}, args...)...)
	// The server reads only what it is given: no CALLQOS_* of the caller's shell.
	cmd.Env = serverEnv()
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s := &Server{cmd: cmd, dir: dir, exited: make(chan error, 1)}
	go func() { s.exited <- cmd.Wait() }()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		select {
		case err := <-s.exited:
			os.RemoveAll(dir)
			return nil, fmt.Errorf("callqos serve exited before serving: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if b, err := os.ReadFile(portFile); err == nil {
			if port, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && port > 0 {
				s.Addr = fmt.Sprintf("127.0.0.1:%d", port)
				return s, nil
			}
		}
	}
	s.Stop()
	return nil, errors.New("callqos serve wrote no port file within 30s")
}

// Stop sends SIGTERM and waits for the server to exit (SIGKILL after 10s).
func (s *Server) Stop() error {
	if s.cmd == nil {
		return nil
	}
	defer os.RemoveAll(s.dir)
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.exited:
		return err
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
		return errors.New("callqos serve did not stop within 10s of SIGTERM")
	}
}

func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CALLQOS_") {
			env = append(env, kv)
		}
	}
	return env
}

// findBinary is $CALLQOS_BIN or the nearest .venv/bin/callqos above the working directory.
func findBinary() (string, error) {
	if bin := os.Getenv("CALLQOS_BIN"); bin != "" {
		return bin, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		bin := filepath.Join(dir, ".venv", "bin", "callqos")
		if _, err := os.Stat(bin); err == nil {
			return bin, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no .venv/bin/callqos found above the working directory: run `make venv` at the top, or set CALLQOS_BIN or CALLQOS_TARGET")
		}
		dir = parent
	}
}

// Main is a TestMain body: it starts a server, sets *addr to its address, runs the tests,
// stops the server, and exits with the tests' status (failing too if the server did not stop
// cleanly on SIGTERM).
func Main(m *testing.M, addr *string) {
	srv, err := Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting callqos serve:", err)
		os.Exit(1)
	}
	*addr = srv.Addr
	code := m.Run()
	if err := srv.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stopping callqos serve:", err)
		code = max(code, 1)
	}
	os.Exit(code)
}
