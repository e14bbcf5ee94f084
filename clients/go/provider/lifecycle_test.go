package provider_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/callqos/callqos/clients/go/provider"
)

// TestMain doubles as a provider program: with CALLQOS_KIT_TEST_CHILD set, this test binary is
// the provider a server launches (provider.Main), for the lifecycle test below.
func TestMain(m *testing.M) {
	if os.Getenv("CALLQOS_KIT_TEST_CHILD") != "" {
		provider.Main(newLedger(1000))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A launched provider listens where the server says, announces itself on stdout, and exits when
// the server goes away (its stdin closes) — as the server's launcher expects.
func TestALaunchedProviderShakesHandsAndExitsWhenItsServerGoesAway(t *testing.T) {
	dir, err := os.MkdirTemp("/tmp", "cq-go-child-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	socket := filepath.Join(dir, "provider.sock")
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), "CALLQOS_KIT_TEST_CHILD=1",
		provider.MagicCookieEnv+"="+provider.MagicCookie, provider.SocketEnv+"="+socket)
	stdin, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("no handshake: %v", err)
	}
	if want := "CALLQOS_PROVIDER|1|unix|" + socket + "|grpc\n"; line != want {
		t.Fatalf("handshake %q, want %q", line, want)
	}
	if _, err := os.Stat(socket); err != nil {
		t.Fatalf("not listening where told: %v", err)
	}
	stdin.Close() // the server is gone
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(10 * time.Second):
		child.Process.Kill()
		t.Fatal("the provider outlived its server")
	}
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
}
