package main

import (
	"testing"

	"github.com/callqos/callqos/clients/go/provider/internal/certify"
)

// TestCertified: callqos-conformance --provider-command ./classquota says conformant, except
// that a capacity set with UpdateLink is not durable yet: the server launches a new provider
// process when it restarts, which starts with its configured capacity (RESTART-002, and the
// model-based histories that restart after a capacity change: LINK-4). The host puts back the
// capacities it acknowledged once #11 (the admission ledger's durable link capacities) lands;
// the suite then fails this test (a known failure that passes) until these two are removed.
func TestCertified(t *testing.T) { certify.Conformant(t, "RESTART-002", "MODEL-001") }
