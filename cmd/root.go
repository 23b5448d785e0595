// Package cmd is fleetcert's command line: one file per command with its
// flags, wiring and output. The work itself lives in the packages below.
package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"golang.org/x/term"

	"github.com/fleetcert/fleetcert/orchestrator"
)

// globals holds the flags every command shares.
type globals struct {
	inventory     string
	clusters      []string
	selectors     []string
	concurrency   int
	timeout       duration
	output        string
	logFormat     string
	verbose       bool
	dryRun        bool
	yes           bool
	configFile    string
	hostKeyPolicy string
}

// system is what one invocation of fleetcert takes from outside the
// program, in one place, as the GitHub CLI's factory and IOStreams hold
// it: the standard streams and whether a person is at them, how nodes are
// reached, and where interrupts come from. Execute fills it from the
// process; tests fill it with buffers, the fake fleet of
// orchestrator/fleettest and a channel they deliver signals on, and so
// run every command in-process.
type system struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	// stdinTTY and stderrTTY say whether those streams are terminals:
	// with both the operator can be asked (see interactive); with stderr
	// a run's progress is a live view. osSystem detects them; tests set
	// them.
	stdinTTY, stderrTTY bool
	// dial reaches nodes; nil dials SSH as the flags say (see dialer).
	dial orchestrator.Dialer
	// signals delivers SIGINT and SIGTERM; nil listens for the process's
	// own (see interruptible).
	signals <-chan os.Signal
}

// osSystem is the process's system: its streams, terminals detected on
// them, SSH and the process's signals.
func osSystem(stdin io.Reader, stdout, stderr io.Writer) system {
	return system{stdin: stdin, stdout: stdout, stderr: stderr, stdinTTY: isTerminal(stdin), stderrTTY: isTerminal(stderr)}
}

func isTerminal(stream any) bool {
	f, ok := stream.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// app is one invocation of fleetcert: its system, flags and logger.
type app struct {
	system
	g   globals
	log *slog.Logger
	v   *viper.Viper
}

// Execute runs fleetcert with os.Args and returns the process exit code.
func Execute() int {
	return run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
}

// run runs one command line on the given streams, as the process would.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return (&app{system: osSystem(stdin, stdout, stderr)}).run(args)
}

// run executes one command line in a's system.
func (a *app) run(args []string) int {
	stderr := a.stderr
	a.v = viper.New()
	root := a.newRoot()
	root.SetArgs(args)
	root.SetIn(a.stdin)
	root.SetOut(a.stdout)
	root.SetErr(stderr)

	ctx, stop := interruptible(stderr, a.signals)
	defer stop()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	code := exitCode(err)
	var quiet *exitError
	if !errors.As(err, &quiet) || !quiet.silent {
		fmt.Fprintf(stderr, "Error: %v\n", err)
	}
	return code
}

func (a *app) newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "fleetcert",
		Short: "Rotate k3s certificates and CAs across a fleet of clusters over SSH",
		Long: `fleetcert rotates k3s certificates and certificate authorities across many
clusters from one controller, over SSH: it reads an inventory of clusters,
checks expiry, generates and validates CA material natively, loads it on one
server per cluster, rewrites pinned join tokens and restarts nodes
servers-first behind health gates.`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		PersistentPreRunE: func(c *cobra.Command, _ []string) error { return a.setup(c) },
	}
	f := root.PersistentFlags()
	f.StringVarP(&a.g.inventory, "inventory", "i", "", "inventory file (hosts.yaml); - reads standard input")
	f.StringArrayVar(&a.g.clusters, "cluster", nil, "only this cluster (repeatable)")
	f.StringArrayVar(&a.g.selectors, "selector", nil, "only clusters whose labels match key=value (repeatable, all must match)")
	f.IntVar(&a.g.concurrency, "concurrency", 16, "nodes or clusters worked on at once")
	a.g.timeout = duration(defaultTimeout)
	f.Var(&a.g.timeout, "timeout", "deadline for each SSH connection and each remote command (Go duration or days, e.g. 90s, 5m); health waits have --health-timeout")
	f.StringVarP(&a.g.output, "output", "o", "table", "output format: table or json")
	f.StringVar(&a.g.logFormat, "log-format", "text", "log format on stderr: text or json")
	f.BoolVarP(&a.g.verbose, "verbose", "v", false, "debug logging")
	f.BoolVar(&a.g.dryRun, "dry-run", false, "gather facts and print every change that would be made; change nothing")
	f.BoolVar(&a.g.yes, "yes", false, "change nodes without showing the plan and asking (needed without a terminal: scheduled runs)")
	f.StringVar(&a.g.configFile, "config", "", "config file (default ~/.config/fleetcert/config.yaml when it exists)")
	f.StringVar(&a.g.hostKeyPolicy, "host-key-policy", "strict", "SSH host key policy: strict, accept-new or insecure")

	root.AddCommand(a.newVersionCmd())
	root.AddCommand(a.newCACmd(), a.newTokenCmd())
	root.AddCommand(a.newFactsCmd(), a.newStatusCmd())
	root.AddCommand(a.newCheckCmd())
	root.AddCommand(a.newRotateCACmd(), a.newRotateSAKeyCmd(), a.newRotateCmd())
	root.AddCommand(a.newInventoryCmd())
	return root
}

// setup runs before every command: config file and environment through
// viper, then logging.
func (a *app) setup(c *cobra.Command) error {
	if err := a.loadConfig(c); err != nil {
		return usageError(err)
	}
	if a.g.logFormat != "text" && a.g.logFormat != "json" {
		return usageErrorf("--log-format must be text or json, not %q", a.g.logFormat)
	}
	if a.g.concurrency < 1 {
		return usageErrorf("--concurrency must be at least 1")
	}
	level := slog.LevelInfo
	if a.g.verbose {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level}
	if a.g.logFormat == "json" {
		a.log = slog.New(slog.NewJSONHandler(a.stderr, opts))
	} else {
		a.log = slog.New(slog.NewTextHandler(a.stderr, opts))
	}
	return nil
}

// loadConfig fills every flag the user did not set from FLEETCERT_* in the
// environment or from the config file, in that order of precedence, so the
// commands only ever read their flags.
func (a *app) loadConfig(c *cobra.Command) error {
	v := a.v
	v.SetEnvPrefix("FLEETCERT")
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_"))
	v.AutomaticEnv()
	file := a.g.configFile
	explicit := file != ""
	if !explicit {
		file = os.Getenv("FLEETCERT_CONFIG")
		explicit = file != ""
	}
	if !explicit {
		if home, err := os.UserHomeDir(); err == nil {
			file = filepath.Join(home, ".config", "fleetcert", "config.yaml")
		}
	}
	if file != "" {
		v.SetConfigFile(file)
		v.SetConfigType("yaml")
		if err := v.ReadInConfig(); err != nil {
			if explicit || !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("config file %s: %w", file, err)
			}
		}
	}
	var errs []error
	c.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "config" || !v.IsSet(f.Name) {
			return
		}
		if err := setFlagFrom(f, v.Get(f.Name)); err != nil {
			errs = append(errs, fmt.Errorf("%s (from environment or config file): %w", f.Name, err))
		}
	})
	return errors.Join(errs...)
}

// setFlagFrom sets a flag from a config or environment value; lists come as
// YAML sequences from the file and as comma-separated strings from the
// environment.
func setFlagFrom(f *pflag.Flag, val any) error {
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		var items []string
		switch x := val.(type) {
		case []any:
			for _, it := range x {
				items = append(items, fmt.Sprint(it))
			}
		default:
			for _, it := range strings.Split(fmt.Sprint(x), ",") {
				if it = strings.TrimSpace(it); it != "" {
					items = append(items, it)
				}
			}
		}
		return sv.Replace(items)
	}
	return f.Value.Set(fmt.Sprint(val))
}

// interrupted is the cancel cause of a run stopped by a signal.
type interrupted struct{ sig os.Signal }

func (i interrupted) Error() string     { return "interrupted by " + i.sig.String() }
func (i interrupted) Signal() os.Signal { return i.sig }

// interruptible returns a context cancelled by the first SIGINT or SIGTERM
// from sigs (nil: the process's own): commands finish their current step,
// save state and exit 130 or 143. A second signal exits at once.
func interruptible(stderr io.Writer, sigs <-chan os.Signal) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	unsubscribe := func() {}
	if sigs == nil {
		c := make(chan os.Signal, 2)
		signal.Notify(c, os.Interrupt, syscall.SIGTERM)
		sigs, unsubscribe = c, func() { signal.Stop(c) }
	}
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-sigs:
			fmt.Fprintf(stderr, "%s: finishing the current step and saving state (signal again to exit at once)\n", sig)
			cancel(interrupted{sig})
		case <-done:
			return
		}
		select {
		case sig := <-sigs:
			code := ExitSIGINT
			if sig == syscall.SIGTERM {
				code = ExitSIGTERM
			}
			os.Exit(code)
		case <-done:
		}
	}()
	return ctx, func() { close(done); unsubscribe(); cancel(nil) }
}
