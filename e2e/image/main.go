// Command image builds the fleetcert e2e node images (make e2e-image): the
// systemd one and the OpenRC one, or only those -init names.
//
//	go run ./e2e/image [-q] [-init systemd|openrc|all]
//
// It prints each image's tag (one a line, systemd first) and how long each
// step took. See package e2e/image/build for what the images hold and how
// they are cached.
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
	quiet := flag.Bool("q", false, "print only the image tags")
	which := flag.String("init", "all", "which image: systemd, openrc or all")
	flag.Parse()

	inits := build.Inits
	if *which != "all" {
		inits = []string{*which}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	for _, init := range inits {
		start := time.Now()
		opts := build.Options{Init: init}
		if !*quiet {
			opts.Logf = func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
		}
		res, err := build.Ensure(ctx, opts)
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e image (%s): %v\n", init, err)
			os.Exit(1)
		}
		if !*quiet {
			for _, t := range res.Timings {
				fmt.Fprintf(os.Stderr, "  %-30s %s\n", t.Step, t.Took)
			}
			fmt.Fprintf(os.Stderr, "e2e image (%s) ready in %s (built: %v)\n", init, time.Since(start).Round(time.Millisecond), res.Built)
		}
		fmt.Println(res.Image)
	}
}
