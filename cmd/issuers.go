package cmd

import (
	"errors"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/fleetcert/fleetcert/pki"
)

// issuerFlags name the operator's root and intermediate: read only from
// these files, kept in memory, never written anywhere. ca generate and
// rotate-ca share them.
type issuerFlags struct {
	rootCA, rootKey, interCA, interKey string
}

func (f *issuerFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.rootCA, "root-ca", "", "your root CA certificate (PEM)")
	fs.StringVar(&f.rootKey, "root-key", "", "its private key (PEM; stays on the controller)")
	fs.StringVar(&f.interCA, "intermediate-ca", "", "your intermediate CA certificate (PEM), signed by --root-ca, instead of --root-key")
	fs.StringVar(&f.interKey, "intermediate-key", "", "its private key (PEM; stays on the controller)")
}

// given reports whether the operator named a root.
func (f issuerFlags) given() bool { return f.rootCA != "" }

// read checks how the flags combine, then reads the files into in. Any
// problem is a usage error (exit 2), every one listed.
func (f issuerFlags) read(in *pki.CustomInput) error {
	switch {
	case f.rootCA == "" && (f.rootKey != "" || f.interCA != "" || f.interKey != ""):
		return usageErrorf("--root-key, --intermediate-ca and --intermediate-key need --root-ca")
	case (f.interCA == "") != (f.interKey == ""):
		return usageErrorf("--intermediate-ca and --intermediate-key go together")
	case f.rootCA != "" && f.rootKey == "" && f.interCA == "":
		return usageErrorf("--root-ca needs --root-key, or --intermediate-ca and --intermediate-key")
	}
	var errs []error
	read := func(flag, path string, fn func(string) error) {
		if path != "" {
			if err := fn(path); err != nil {
				errs = append(errs, fmt.Errorf("--%s: %w", flag, err))
			}
		}
	}
	read("root-ca", f.rootCA, func(p string) (err error) { in.Root, err = readFirstCert(p); return })
	read("root-key", f.rootKey, func(p string) (err error) { in.RootKey, err = readFirstKey(p); return })
	read("intermediate-ca", f.interCA, func(p string) (err error) { in.Intermediate, err = readFirstCert(p); return })
	read("intermediate-key", f.interKey, func(p string) (err error) { in.IntermediateKey, err = readFirstKey(p); return })
	if len(errs) > 0 {
		return usageError(errors.Join(errs...))
	}
	return nil
}
