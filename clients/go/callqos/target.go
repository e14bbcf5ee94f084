package callqos

import (
	"os"
	"strings"
)

// The address convention, shared by the server, the CLI, every client, their tests and the
// examples (callqos.wire in the Python distribution is its home): the server listens on
// CALLQOS_LISTEN; a client connects to CALLQOS_TARGET, else to the address in CALLQOS_LISTEN
// (a wildcard host read as loopback), else to DefaultAddress.
const (
	// TargetEnv names where a client connects.
	TargetEnv = "CALLQOS_TARGET"
	// ListenEnv names where the server listens; clients fall back to it.
	ListenEnv = "CALLQOS_LISTEN"
	// DefaultAddress is where the server listens and clients connect when told nothing else.
	DefaultAddress = "127.0.0.1:50051"
)

var wildcardHosts = map[string]string{"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}

// DefaultTarget is the target of the address convention, from the environment.
func DefaultTarget() string {
	return targetFrom(os.Getenv)
}

func targetFrom(getenv func(string) string) string {
	if target := strings.TrimSpace(getenv(TargetEnv)); target != "" {
		return target
	}
	if listen := strings.TrimSpace(getenv(ListenEnv)); listen != "" {
		if i := strings.LastIndex(listen, ":"); i >= 0 {
			host, port := listen[:i], listen[i+1:]
			if loopback, ok := wildcardHosts[host]; ok {
				host = loopback
			}
			return host + ":" + port
		}
	}
	return DefaultAddress
}
