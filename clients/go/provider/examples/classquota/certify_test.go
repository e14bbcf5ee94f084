package main

import (
	"testing"

	"github.com/callqos/callqos/clients/go/provider/internal/certify"
)

// TestCertified: callqos-conformance --provider-command ./classquota says conformant.
func TestCertified(t *testing.T) { certify.Conformant(t) }
