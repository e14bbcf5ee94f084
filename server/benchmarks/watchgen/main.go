// watchgen is bench_watch.py's load generator: it opens WatchEvents streams on a callqos server
// and times the delivery of each event. It is written in Go so that reading a thousand streams
// costs the shared machine little of the CPU the server is being measured with (the Python
// generator, bench_watch.py --generator python, spends more per message than the server does).
//
// It speaks JSON lines on stdout, as the Python generator does: {"ready": ...} once every stream
// has opened or failed, then {"done": ...} with every delivery time once each stream has received
// -events events or -deadline seconds have passed.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	callqospb "github.com/callqos/callqos/clients/go/gen/callqos/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const startSequenceHeader = "x-callqos-start-sequence"
const principalHeader = "x-callqos-principal"

type stream struct {
	delays []float64 // ms, one per event received
	failed string    // the status code when it did not open
	opened bool
}

func cpuSeconds() float64 {
	var usage syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano()).Seconds()
}

func say(fields map[string]any) {
	line, _ := json.Marshal(fields)
	fmt.Println(string(line))
}

func main() {
	target := flag.String("target", "", "HOST:PORT of the server (loopback)")
	index := flag.Int("index", 0, "this generator's number (in its principals' names)")
	watchers := flag.Int("watchers", 1000, "streams to open")
	events := flag.Int("events", 20, "events each stream waits for (0: hold the streams open until SIGTERM)")
	deadline := flag.Float64("deadline", 60, "seconds to wait for the events")
	perConnection := flag.Int("streams-per-connection", 200, "streams on one connection")
	openTimeout := flag.Float64("open-timeout", 120, "seconds to wait for every stream to open")
	flag.Parse()

	connections := make([]*grpc.ClientConn, (*watchers+*perConnection-1) / *perConnection)
	for i := range connections {
		conn, err := grpc.NewClient(*target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer conn.Close()
		connections[i] = conn
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	streams := make([]stream, *watchers)
	var settled, finished sync.WaitGroup
	settled.Add(*watchers)
	finished.Add(*watchers)
	started := time.Now()
	for i := range streams {
		go func(i int) {
			defer finished.Done()
			s := &streams[i]
			connection := i / *perConnection
			client := callqospb.NewCallQosServiceClient(connections[connection])
			principal := fmt.Sprintf("watcher-%d-%d", *index, connection)
			call, err := client.WatchEvents(metadata.AppendToOutgoingContext(ctx, principalHeader, principal),
				&callqospb.WatchEventsRequest{})
			if err == nil {
				var header metadata.MD
				header, err = call.Header()
				if err == nil && len(header.Get(startSequenceHeader)) == 0 {
					_, err = call.Recv() // no header: the stream ended with a status
				}
			}
			if err != nil {
				s.failed = status.Code(err).String()
				settled.Done()
				return
			}
			s.opened = true
			settled.Done()
			if *events == 0 {
				<-ctx.Done()
				return
			}
			for len(s.delays) < *events {
				response, err := call.Recv()
				received := time.Now()
				if err != nil {
					return
				}
				created := response.GetEvent().GetCreateTime().AsTime()
				s.delays = append(s.delays, float64(received.Sub(created).Nanoseconds())/1e6)
			}
		}(i)
	}

	wait := func(group *sync.WaitGroup, seconds float64) {
		done := make(chan struct{})
		go func() { group.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Duration(seconds * float64(time.Second))):
		}
	}
	wait(&settled, *openTimeout)
	failed := map[string]int{}
	opened := 0
	for i := range streams {
		switch {
		case streams[i].opened:
			opened++
		case streams[i].failed != "":
			failed[streams[i].failed]++
		default:
			failed["DEADLINE_EXCEEDED"]++
		}
	}
	say(map[string]any{"ready": true, "opened": opened, "failed": failed, "seconds": time.Since(started).Seconds()})

	if *events == 0 {
		<-ctx.Done() // holding the streams open until killed
	}
	cpuBefore := cpuSeconds()
	wait(&finished, *deadline)
	cpu := cpuSeconds() - cpuBefore
	delays := []float64{}
	missing := 0
	for i := range streams {
		if !streams[i].opened {
			continue
		}
		delays = append(delays, streams[i].delays...)
		missing += *events - len(streams[i].delays)
	}
	say(map[string]any{"done": true, "delays_ms": delays, "missing": missing, "cpu_seconds": cpu})
}
