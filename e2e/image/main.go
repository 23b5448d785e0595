// Command image builds the fleetcert e2e node image (make e2e-image):
//
//	go run ./e2e/image [-q]
//
// It prints the image tag and how long each step took. See package
// e2e/image/build for what the image holds and how it is cached.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/fleetcert/fleetcert/e2e/image/build"
)

func main() {
	quiet := flag.Bool("q", false, "print only the image tag")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	start := time.Now()
	opts := build.Options{}
	if !*quiet {
		opts.Logf = func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	}
	res, err := build.Ensure(ctx, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e image:", err)
		os.Exit(1)
	}
	if !*quiet {
		for _, t := range res.Timings {
			fmt.Fprintf(os.Stderr, "  %-30s %s\n", t.Step, t.Took)
		}
		fmt.Fprintf(os.Stderr, "e2e image ready in %s (built: %v)\n", time.Since(start).Round(time.Millisecond), res.Built)
	}
	fmt.Println(res.Image)
}
