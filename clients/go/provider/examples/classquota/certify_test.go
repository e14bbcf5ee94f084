package main

import (
	"testing"

	"github.com/callqos/callqos/clients/go/provider/internal/certify"
)

// TestCertified: callqos-conformance --provider-command ./classquota says conformant — its link
// capacities set with UpdateLink survive the server's restarts too (RESTART-002), which the host
// puts back in the new provider process before restoring its calls (SPEC.md LINK-5).
func TestCertified(t *testing.T) { certify.Conformant(t) }
