package cmd

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/fleetcert/fleetcert/pki"
)

func (a *app) newCACmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "ca",
		Short: "Make, check and inspect k3s CA material offline (no SSH)",
		Long: `Offline CA material for k3s certificate rotate-ca --path=DIR. Every directory
argument is laid out as rotate-ca reads it: DIR/tls/server-ca.crt, .key,
client-ca.*, request-header-ca.*, etcd/peer-ca.*, etcd/server-ca.*, service.key
(a k3s server directory, e.g. /var/lib/rancher/k3s/server, has that layout).
Root and intermediate keys are read only from the files you name and are
never written into an output directory.`,
	}
	c.AddCommand(a.newCAGenerateCmd(), a.newCACrossSignCmd(), a.newCAServiceKeyCmd(), a.newCAVerifyCmd(), a.newCAInspectCmd())
	return c
}

// caCheckOutput accepts -o table or json.
func (a *app) caCheckOutput() error {
	if a.g.output != "table" && a.g.output != "json" {
		return usageErrorf("--output must be table or json here, not %q", a.g.output)
	}
	return nil
}

func (a *app) caPrintJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// caWritten is what a command that makes material reports.
type caWritten struct {
	Out        string   `json:"out"`
	Files      []string `json:"files"`
	CAHash     string   `json:"caHash,omitempty"`
	IssuersOut string   `json:"issuersOut,omitempty"`
	Issuers    []string `json:"issuers,omitempty"`
}

func (a *app) reportWritten(w caWritten) error {
	if a.g.output == "json" {
		return a.caPrintJSON(w)
	}
	for _, f := range w.Files {
		fmt.Fprintf(a.stdout, "wrote %s\n", filepath.Join(w.Out, pki.TLSDir, filepath.FromSlash(f)))
	}
	for _, f := range w.Issuers {
		fmt.Fprintf(a.stdout, "wrote %s (keep it safe, never on a node)\n", filepath.Join(w.IssuersOut, f))
	}
	if w.CAHash != "" {
		fmt.Fprintf(a.stdout, "server CA hash (K10<hash>:: in join tokens): %s\n", w.CAHash)
	}
	fmt.Fprintf(a.stdout, "to load: copy %s to one server, touch its files (k3s must see them newer than its datastore), then run k3s certificate rotate-ca --path=<that copy>\n", w.Out)
	return nil
}

func caWrittenFiles(s pki.CASet, out string) caWritten {
	w := caWritten{Out: out, Files: s.Names()}
	if b, ok := s["server-ca.crt"]; ok {
		w.CAHash = pki.HashCA(b)
	}
	return w
}

// readFirstCert reads the first certificate of an operator-named file.
func readFirstCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := pki.ParseCerts(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs[0], nil
}

// readFirstKey reads the first private key of an operator-named file.
func readFirstKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	keys, err := pki.ParseKeys(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys[0], nil
}

// caFromTo checks the output format and --out, and reads --from: the
// common start of the commands that derive new material from a server's.
func (a *app) caFromTo(from, out string) (pki.CASet, error) {
	if err := a.caCheckOutput(); err != nil {
		return nil, err
	}
	if out == "" {
		return nil, usageErrorf("--out is required")
	}
	return readCASet("from", from)
}

// readCASet reads a rotate-ca layout directory; unreadable input is a usage
// error (exit 2).
func readCASet(flag, dir string) (pki.CASet, error) {
	if dir == "" {
		return nil, usageErrorf("--%s is required", flag)
	}
	s, err := pki.ReadDir(dir)
	if err != nil {
		return nil, usageErrorf("--%s: %v", flag, err)
	}
	return s, nil
}

// pathInside reports whether path is dir or below it.
func pathInside(path, dir string) bool {
	p, err1 := filepath.Abs(path)
	d, err2 := filepath.Abs(dir)
	if err1 != nil || err2 != nil {
		return false
	}
	rel, err := filepath.Rel(d, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

type caGenerateFlags struct {
	issuerFlags
	out, serviceKey, keyType, issuersOut string
	overwrite                            bool
}

func (a *app) newCAGenerateCmd() *cobra.Command {
	var f caGenerateFlags
	c := &cobra.Command{
		Use:   "generate --out DIR [--root-ca F --root-key F | --root-ca F --intermediate-ca F --intermediate-key F] [--service-key F]",
		Short: "Make a custom CA topology: root -> intermediate -> the five k3s CAs",
		Long: `Make the custom CA topology of k3s's generate-custom-ca-certs.sh: a root (RSA 4096,
20 years), an intermediate (RSA 4096, ~10 years) and the five cluster CAs (ECDSA
P-256, ~10 years), each <type>-ca.crt = cluster CA + intermediate + root, plus
service.key = a new RSA 2048 key followed by the keys of --service-key.

With --root-ca and --root-key a new intermediate is made under your root; with
--root-ca, --intermediate-ca and --intermediate-key the cluster CAs are signed
by your intermediate. The same root keeps the join token hash: rotation
without disruption. Without --root-ca, root and intermediate are generated and
written with their keys to --issuers-out, never to --out.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return a.runGenerate(f) },
	}
	fl := c.Flags()
	fl.StringVar(&f.out, "out", "", "output directory (files go to DIR/tls/)")
	f.issuerFlags.register(fl)
	fl.StringVar(&f.serviceKey, "service-key", "", "current service.key, kept after the new key (needed for k3s to accept a rotation)")
	fl.StringVar(&f.keyType, "key-type", string(pki.RSA4096), "key type of generated root and intermediate: "+keyTypeNames())
	fl.StringVar(&f.issuersOut, "issuers-out", "", "directory for generated root and intermediate certificates and keys (required when the root is generated)")
	fl.BoolVar(&f.overwrite, "overwrite", false, "write into non-empty directories")
	return c
}

func keyTypeNames() string {
	var s []string
	for _, k := range pki.KeyTypes {
		s = append(s, string(k))
	}
	return strings.Join(s, ", ")
}

func (a *app) runGenerate(f caGenerateFlags) error {
	if err := a.caCheckOutput(); err != nil {
		return err
	}
	in, err := f.input()
	if err != nil {
		return err
	}
	if in.ServiceKey == nil {
		a.log.Warn("no --service-key: service.key holds only a new key, which k3s rotate-ca refuses on a running cluster (the current signing key must stay in the file)")
	}
	res, err := pki.Env{}.GenerateCustom(in)
	if err != nil {
		return usageError(err)
	}
	issuers, err := res.IssuerFiles()
	if err != nil {
		return err
	}
	if err := res.Set.WriteDir(f.out, f.overwrite); err != nil {
		return withCode(ExitFailed, err)
	}
	w := caWrittenFiles(res.Set, f.out)
	if len(issuers) > 0 {
		if f.issuersOut == "" {
			a.log.Warn("the new intermediate's key is not kept (no --issuers-out); the next rotation needs --root-key")
		} else {
			if err := pki.WriteFiles(f.issuersOut, issuers, f.overwrite); err != nil {
				return withCode(ExitFailed, err)
			}
			w.IssuersOut = f.issuersOut
			for _, n := range []string{"root-ca.pem", "root-ca.key", "intermediate-ca.pem", "intermediate-ca.key"} {
				if _, ok := issuers[n]; ok {
					w.Issuers = append(w.Issuers, n)
				}
			}
		}
	}
	return a.reportWritten(w)
}

// input checks the flags and reads the operator's files.
func (f caGenerateFlags) input() (pki.CustomInput, error) {
	var in pki.CustomInput
	switch {
	case f.out == "":
		return in, usageErrorf("--out is required")
	case !f.given() && f.issuersOut == "":
		return in, usageErrorf("generating a new root needs --issuers-out DIR to keep its key (outside --out)")
	case f.issuersOut != "" && (pathInside(f.issuersOut, f.out) || pathInside(f.out, f.issuersOut)):
		return in, usageErrorf("--issuers-out must not overlap --out: root and intermediate keys never go where nodes get files from")
	}
	kt, err := pki.ParseKeyType(f.keyType)
	if err != nil {
		return in, usageErrorf("--key-type: %v", err)
	}
	in.KeyType = kt
	if err := f.read(&in); err != nil {
		return in, err
	}
	if f.serviceKey != "" {
		if in.ServiceKey, err = os.ReadFile(f.serviceKey); err != nil {
			return in, usageErrorf("--service-key: %v", err)
		}
	}
	return in, nil
}

func (a *app) newCACrossSignCmd() *cobra.Command {
	var from, out string
	var types []string
	var serviceKey, overwrite bool
	var keep int
	c := &cobra.Command{
		Use:   "cross-sign --from DIR --out DIR",
		Short: "Rotate default (or earlier cross-signed) k3s CAs by cross-signing, as rotate-default-ca-certs.sh",
		Long: `Rotate k3s's self-signed CAs without --force, as k3s's rotate-default-ca-certs.sh
does: per CA a new root, self-signed and cross-signed by the current root, and a
new intermediate under it; the bundle is intermediate + new root + cross-signed
root + old root, the key file intermediate key + new root key. Works again on
material it made before. --from is a k3s server directory (or a copy of one):
DIR/tls/*-ca.crt, *-ca.key, service.key. Join tokens change: the printed hash
is the one k3s will compute (the new self-signed root's fingerprint).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			current, err := a.caFromTo(from, out)
			if err != nil {
				return err
			}
			cts, err := parseCATypes(types)
			if err != nil {
				return err
			}
			env := pki.Env{}
			set, err := env.CrossSign(current, cts...)
			if err != nil {
				return usageError(err)
			}
			if serviceKey {
				if set[pki.ServiceKeyFile], err = env.RotateServiceKey(current[pki.ServiceKeyFile], keep); err != nil {
					return usageError(err)
				}
			}
			if err := set.WriteDir(out, overwrite); err != nil {
				return withCode(ExitFailed, err)
			}
			return a.reportWritten(caWrittenFiles(set, out))
		},
	}
	fl := c.Flags()
	fl.StringVar(&from, "from", "", "current k3s server directory (reads DIR/tls/)")
	fl.StringVar(&out, "out", "", "output directory (files go to DIR/tls/)")
	fl.StringSliceVar(&types, "types", nil, "only these CAs: server, client, request-header, etcd/peer, etcd/server (default all)")
	fl.BoolVar(&serviceKey, "service-key", true, "also rotate service.key (new RSA 2048 key, current keys kept after it)")
	fl.IntVar(&keep, "keep-service-keys", 0, "keep only this many current service-account keys, newest first (0 = all)")
	fl.BoolVar(&overwrite, "overwrite", false, "write into a non-empty directory")
	return c
}

func parseCATypes(names []string) ([]pki.CAType, error) {
	var out []pki.CAType
	for _, n := range names {
		t, ok := pki.CATypeByName(n)
		if !ok {
			return nil, usageErrorf("--types: unknown CA %q (want server, client, request-header, etcd/peer, etcd/server)", n)
		}
		out = append(out, t)
	}
	return out, nil
}

func (a *app) newCAServiceKeyCmd() *cobra.Command {
	var from, out string
	var keep int
	var overwrite bool
	c := &cobra.Command{
		Use:   "service-key --from DIR --out DIR",
		Short: "Rotate only the service-account issuer key",
		Long: `Write DIR/tls/service.key alone: a new RSA 2048 key first (k3s signs service-account
tokens with it), then the current keys, so tokens already issued stay valid.
Load it with rotate-ca and restart servers only.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			current, err := a.caFromTo(from, out)
			if err != nil {
				return err
			}
			if len(current[pki.ServiceKeyFile]) == 0 {
				return usageErrorf("--from: %s has no %s", from, filepath.Join(pki.TLSDir, pki.ServiceKeyFile))
			}
			sk, err := pki.Env{}.RotateServiceKey(current[pki.ServiceKeyFile], keep)
			if err != nil {
				return usageError(err)
			}
			set := pki.CASet{pki.ServiceKeyFile: sk}
			if err := set.WriteDir(out, overwrite); err != nil {
				return withCode(ExitFailed, err)
			}
			return a.reportWritten(caWrittenFiles(set, out))
		},
	}
	fl := c.Flags()
	fl.StringVar(&from, "from", "", "current k3s server directory (reads DIR/tls/service.key)")
	fl.StringVar(&out, "out", "", "output directory (writes DIR/tls/service.key)")
	fl.IntVar(&keep, "keep", 0, "keep only this many current keys, newest first (0 = all; the signing key is always kept)")
	fl.BoolVar(&overwrite, "overwrite", false, "write into a non-empty directory")
	return c
}

// verifyReport is the JSON form of ca verify.
type verifyReport struct {
	// Accepted: k3s rotate-ca accepts the material without --force.
	Accepted bool `json:"accepted"`
	// Force: --force was given; k3s then saves the material anyway.
	Force bool `json:"force"`
	// Staged lists the files present in --new, each validated by k3s.
	Staged   []string      `json:"staged"`
	Errors   []pki.Problem `json:"errors"`
	Warnings []pki.Problem `json:"warnings"`
	Notes    []pki.Problem `json:"notes"`
	// CurrentCAHash and NewCAHash are the join-token hashes before and after.
	CurrentCAHash string `json:"currentCAHash"`
	NewCAHash     string `json:"newCAHash"`
}

func (a *app) newCAVerifyCmd() *cobra.Command {
	var current, staged string
	var force bool
	c := &cobra.Command{
		Use:   "verify --current DIR --new DIR [--force]",
		Short: "Check new CA material with k3s's own rotate-ca rules, plus lint",
		Long: `Check the files in --new DIR/tls against --current DIR/tls exactly as k3s's
rotate-ca endpoint does: every file present in --new is validated (even one
identical to the current file); absent files keep the current ones. Lint
findings k3s does not check (expiry, CA flags, weak keys, validity beyond the
issuer's) are shown as warnings and do not change the exit code.

Exit 0: k3s accepts it. Exit 3: k3s refuses it without --force (every problem
is listed). Exit 2: unreadable input. With --force, exit 0 and the problems
k3s would log and ignore.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := a.caCheckOutput(); err != nil {
				return err
			}
			cur, err := readCASet("current", current)
			if err != nil {
				return err
			}
			next, err := readCASet("new", staged)
			if err != nil {
				return err
			}
			return a.runVerify(cur, next, force)
		},
	}
	fl := c.Flags()
	fl.StringVar(&current, "current", "", "current k3s server directory (reads DIR/tls/)")
	fl.StringVar(&staged, "new", "", "staged material, as given to rotate-ca --path (reads DIR/tls/)")
	fl.BoolVar(&force, "force", false, "judge as rotate-ca --force: problems are reported, not refused")
	return c
}

func (a *app) runVerify(cur, next pki.CASet, force bool) error {
	r := pki.Env{}.Validate(cur, next)
	rep := verifyReport{Accepted: r.OK(), Force: force, Staged: next.Names(), Errors: r.Errors, Warnings: r.Warnings, Notes: r.Notes,
		CurrentCAHash: pki.HashCA(cur["server-ca.crt"]), NewCAHash: pki.HashCA(next.Overlay(cur)["server-ca.crt"])}
	if rep.Errors == nil {
		rep.Errors = []pki.Problem{}
	}
	if rep.Warnings == nil {
		rep.Warnings = []pki.Problem{}
	}
	if rep.Notes == nil {
		rep.Notes = []pki.Problem{}
	}
	if a.g.output == "json" {
		if err := a.caPrintJSON(rep); err != nil {
			return err
		}
	} else {
		a.printVerify(rep)
	}
	if r.OK() || force {
		return nil
	}
	return withCode(ExitRefused, fmt.Errorf("k3s rotate-ca would refuse this material without --force (%d problem(s))", len(r.Errors)))
}

func (a *app) printVerify(rep verifyReport) {
	w := a.stdout
	fmt.Fprintf(w, "staged: %s\n", strings.Join(rep.Staged, " "))
	for _, p := range rep.Errors {
		fmt.Fprintf(w, "ERROR    %s\n", p)
	}
	for _, p := range rep.Warnings {
		fmt.Fprintf(w, "WARNING  %s\n", p)
	}
	for _, p := range rep.Notes {
		fmt.Fprintf(w, "NOTE     %s\n", p)
	}
	switch {
	case rep.Accepted:
		fmt.Fprintln(w, "k3s rotate-ca accepts this material without --force")
	case rep.Force:
		fmt.Fprintln(w, "k3s rotate-ca refuses this material without --force; with --force it saves it anyway,")
		fmt.Fprintln(w, "logging \"Save of CA certificates and keys forced, ignoring validation errors\"")
	default:
		fmt.Fprintln(w, "k3s rotate-ca refuses this material without --force")
	}
	if rep.CurrentCAHash == rep.NewCAHash {
		fmt.Fprintf(w, "server CA hash unchanged (%s): join tokens stay valid\n", rep.NewCAHash)
	} else {
		fmt.Fprintf(w, "server CA hash changes %s -> %s: every secure join token must be rewritten\n", rep.CurrentCAHash, rep.NewCAHash)
	}
}

func (a *app) newCAInspectCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "inspect DIR",
		Short: "Show the certificates and keys of DIR/tls (never the keys themselves)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := a.caCheckOutput(); err != nil {
				return err
			}
			set, err := pki.ReadDir(args[0])
			if err != nil {
				return usageError(err)
			}
			infos := set.Inspect()
			if a.g.output == "json" {
				return a.caPrintJSON(struct {
					Dir   string         `json:"dir"`
					Files []pki.FileInfo `json:"files"`
				}{args[0], infos})
			}
			return printCAInspect(a.stdout, infos)
		},
	}
}

func printCAInspect(out io.Writer, infos []pki.FileInfo) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "FILE\t#\tSUBJECT\tISSUER\tNOT AFTER\tKEY\tCA\tSHA-256")
	for _, fi := range infos {
		if fi.Error != "" {
			fmt.Fprintf(w, "%s\t\tERROR: %s\t\t\t\t\t\n", fi.File, fi.Error)
		}
		for i, c := range fi.Certs {
			ca := "no"
			if c.IsCA {
				ca = "yes"
			}
			fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", fi.File, i+1, c.Subject, c.Issuer,
				c.NotAfter.Format(time.RFC3339), c.KeyType, ca, c.SHA256)
		}
		for i, k := range fi.Keys {
			fmt.Fprintf(w, "%s\t%d\t(private key)\t\t\t%s\t\t\n", fi.File, i+1, k.KeyType)
		}
	}
	for _, fi := range infos {
		if fi.Kind != "" {
			fmt.Fprintf(w, "\n%s: %s CA", fi.File, fi.Kind)
			if fi.CAHash != "" {
				fmt.Fprintf(w, ", join token hash %s", fi.CAHash)
			}
		}
	}
	fmt.Fprintln(w)
	return w.Flush()
}
