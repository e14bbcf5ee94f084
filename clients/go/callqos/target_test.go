package callqos

import "testing"

// The same table as the Python client's test of callqos.wire.default_target.
func TestDefaultTargetFollowsTheAddressConvention(t *testing.T) {
	for _, c := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{}, "127.0.0.1:50051"},
		{map[string]string{TargetEnv: "10.0.0.1:7000"}, "10.0.0.1:7000"},
		{map[string]string{TargetEnv: "10.0.0.1:7000", ListenEnv: "127.0.0.1:6000"}, "10.0.0.1:7000"},
		{map[string]string{ListenEnv: "127.0.0.1:6000"}, "127.0.0.1:6000"},
		{map[string]string{ListenEnv: "0.0.0.0:6000"}, "127.0.0.1:6000"},
		{map[string]string{ListenEnv: "[::]:6000"}, "[::1]:6000"},
		{map[string]string{ListenEnv: "[::1]:6000"}, "[::1]:6000"},
		{map[string]string{ListenEnv: "server.example:6000"}, "server.example:6000"},
		{map[string]string{TargetEnv: " ", ListenEnv: "127.0.0.1:6000"}, "127.0.0.1:6000"},
	} {
		if got := targetFrom(func(k string) string { return c.env[k] }); got != c.want {
			t.Errorf("%v: got %q, want %q", c.env, got, c.want)
		}
	}
}
