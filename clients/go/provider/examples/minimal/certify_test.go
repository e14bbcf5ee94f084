package main

import (
	"testing"

	"github.com/callqos/callqos/clients/go/provider/internal/certify"
)

// TestCertified: the README's provider, certified as the README says.
func TestCertified(t *testing.T) { certify.Conformant(t) }
