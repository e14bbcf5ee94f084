// Package grpcurl checks that a stock grpcurl (pinned, installed by the Makefile into .bin)
// can use the server with no proto files: services via reflection, a call, the health check.
package grpcurl

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/callqos/callqos/clients/go/internal/testserver"
)

var addr string

func TestMain(m *testing.M) { testserver.Main(m, &addr) }

// grpcurl runs `$GRPCURL -plaintext FLAGS ADDR ARGS` (else ../../.bin/grpcurl) against the
// test server.
func grpcurl(t *testing.T, flags []string, args ...string) string {
	t.Helper()
	bin := os.Getenv("GRPCURL")
	if bin == "" {
		bin, _ = filepath.Abs("../../.bin/grpcurl")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("no grpcurl at %s: run `make -C clients/go tools`", bin)
	}
	args = append(append(append([]string{"-plaintext", "-max-time", "10"}, flags...), addr), args...)
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("grpcurl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestListServicesByReflection(t *testing.T) {
	out := grpcurl(t, nil, "list")
	for _, svc := range []string{"callqos.v1.CallQosService", "grpc.health.v1.Health"} {
		if !strings.Contains(out, svc+"\n") {
			t.Errorf("grpcurl list lacks %s:\n%s", svc, out)
		}
	}
	if out := grpcurl(t, nil, "describe", "callqos.v1.CallQosService"); !strings.Contains(out, "rpc WatchEvents") {
		t.Errorf("describe CallQosService:\n%s", out)
	}
	if out := grpcurl(t, nil, "list"); !strings.Contains(out, "grpc.reflection.v1.ServerReflection\n") {
		t.Errorf("grpcurl list lacks grpc.reflection.v1:\n%s", out)
	}
}

// A method and a message describe too (grpc-python's own reflection answers "Symbol not
// found" for them, grpc/grpc#34743, which also breaks ghz in reflection mode).
func TestDescribeMethodAndMessage(t *testing.T) {
	out := grpcurl(t, nil, "describe", "callqos.v1.CallQosService.CreateCall")
	if !strings.Contains(out, "rpc CreateCall ( .callqos.v1.CreateCallRequest ) returns ( .callqos.v1.Call )") {
		t.Errorf("describe CreateCall:\n%s", out)
	}
	if out := grpcurl(t, nil, "describe", "callqos.v1.Call"); !strings.Contains(out, "message Call {") {
		t.Errorf("describe Call:\n%s", out)
	}
}

func TestCreateCallWithJSON(t *testing.T) {
	req := `{"call": {"destination": "sip:erin@example.com", "serviceLevel": "SERVICE_LEVEL_NEEDED",
	  "requestedQos": {"sending": {"serviceType": "SERVICE_TYPE_CONTROLLED_LOAD",
	    "tokenRateBytesPerSecond": "64000", "maxSduSizeBytes": 1500, "minimumPolicedSizeBytes": 64},
	   "receiving": {"serviceType": "SERVICE_TYPE_BEST_EFFORT"}}}}`
	out := grpcurl(t, []string{"-H", "x-callqos-principal: grpcurl", "-d", req}, "callqos.v1.CallQosService/CreateCall")
	var call struct {
		Name, State, Owner string
	}
	if err := json.Unmarshal([]byte(out), &call); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if !strings.HasPrefix(call.Name, "calls/") || call.State != "STATE_CONNECTED" || call.Owner != "grpcurl" {
		t.Fatalf("CreateCall answered:\n%s", out)
	}
	grpcurl(t, []string{"-H", "x-callqos-principal: grpcurl", "-d", `{"name": "` + call.Name + `"}`},
		"callqos.v1.CallQosService/DropCall")
}

func TestHealthCheck(t *testing.T) {
	for _, svc := range []string{"", "callqos.v1.CallQosService"} {
		out := grpcurl(t, []string{"-d", `{"service": "` + svc + `"}`}, "grpc.health.v1.Health/Check")
		if !strings.Contains(out, `"status": "SERVING"`) {
			t.Errorf("health of %q:\n%s", svc, out)
		}
	}
}
