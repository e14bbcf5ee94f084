package callqos

// Version is the callqos release this client belongs to: the repository's VERSION file, written
// here by `make stamp` (and checked by `make check-stamp`), the same for every client and server.
const Version = "0.1.0"
