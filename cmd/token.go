package cmd

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/fleetcert/fleetcert/pki"
)

func (a *app) newTokenCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "token",
		Short: "Work with k3s join tokens offline",
	}
	c.AddCommand(a.newTokenHashCmd())
	return c
}

func (a *app) newTokenHashCmd() *cobra.Command {
	var caFile string
	c := &cobra.Command{
		Use:   "hash --ca FILE",
		Short: "Print the CA hash k3s pins in join tokens for a server CA bundle",
		Long: `Print the hash k3s puts in secure join tokens (K10<hash>::...) for a server CA
bundle (server/tls/server-ca.crt, or what https://SERVER:6443/cacerts serves),
computed as k3s does: the SHA-256 of the file's bytes for a single certificate,
the SHA-256 fingerprint of the root for a chain that verifies. Only the 64-hex
hash and a newline go to standard output. --ca - reads standard input.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if caFile == "" {
				return usageErrorf("--ca is required")
			}
			data, err := a.readTokenInput(caFile)
			if err != nil {
				return usageErrorf("--ca: %v", err)
			}
			// k3s fails on a bundle without a certificate rather than hash it.
			if _, err := pki.ParseCerts(data); err != nil {
				return usageErrorf("--ca %s: %v", caFile, err)
			}
			_, err = fmt.Fprintln(a.stdout, pki.HashCA(data))
			return err
		},
	}
	c.Flags().StringVar(&caFile, "ca", "", "server CA bundle (PEM); - for standard input")
	return c
}

// readTokenInput reads a file, or standard input for "-".
func (a *app) readTokenInput(name string) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(a.stdin)
	}
	return os.ReadFile(name)
}
