package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"

	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/pki"
)

// material reads the primary's CA files, makes the new set for the mode,
// validates it with k3s's own rules and computes the target hash. A
// resumed run that already loaded its material keeps its target; one that
// had not loaded yet makes new material (no token pins the old attempt's
// hash: tokens are only rewritten once the material is loaded).
func (r *loadRotation) material(ctx context.Context) error {
	primary := r.run.Primary()
	current, err := readCASet(ctx, primary)
	if err != nil {
		return err
	}
	r.current = current
	if r.prior != nil && r.prior.Loaded {
		r.mode, r.target = Mode(r.prior.Mode), r.prior.TargetHash
		r.run.Info(primary, "new material already loaded by run %s; target %s", r.prior.RunID, short(r.target))
		return nil
	}
	mode, staged, err := r.makeSet(current)
	var refused *refusedError
	if errors.As(err, &refused) {
		return r.refuse(refused.Problems...)
	}
	if err != nil {
		return err
	}
	r.mode, r.staged = mode, staged.Changed(current)
	if len(r.staged) == 0 {
		return r.refuse("the new material is identical to the current one: nothing to rotate")
	}
	if err := r.validate(current); err != nil {
		return err
	}
	r.target = pki.HashCA(r.staged.Overlay(current)[serverCAFile()])
	r.run.Info(primary, "%s: %d files to stage, token hash %s -> %s", r.mode, len(r.staged), short(r.served), short(r.target))
	return nil
}

// makeSet chooses rotate-ca's mode from the primary's files and the flags,
// then makes the new material for it.
func (op *RotateCA) makeSet(current pki.CASet) (Mode, pki.CASet, error) {
	mode, problem := op.mode(current)
	if problem != "" {
		return "", nil, &refusedError{Problems: []string{problem}}
	}
	if op.Material != nil {
		set, err := op.Material(mode, current)
		return mode, set, err
	}
	env := op.PKI
	switch {
	case mode == ModeCrossSign:
		set, err := env.CrossSign(current)
		return mode, set, err
	case !op.CA.Given():
		set, err := env.NewRoot(false)
		return mode, set, err
	}
	in := op.CA
	c, err := env.GenerateCustom(pki.CustomInput{Root: in.Root, RootKey: in.RootKey,
		Intermediate: in.Intermediate, IntermediateKey: in.IntermediateKey})
	if err != nil {
		return mode, nil, err
	}
	delete(c.Set, pki.ServiceKeyFile) // rotate-sa-key's job
	if mode == ModeNewRoot {
		for _, t := range pki.CATypes {
			if t.Etcd {
				delete(c.Set, t.CertFile)
				delete(c.Set, t.KeyFile)
			}
		}
	}
	return mode, c.Set, nil
}

// mode is how rotate-ca rotates the current CAs, or the problem that
// keeps it from them.
func (op *RotateCA) mode(current pki.CASet) (Mode, string) {
	kind := current.Kind()
	switch {
	case op.Force:
		return ModeNewRoot, ""
	case kind == pki.KindMissing:
		return "", "the primary's CA files are missing or unreadable"
	case op.CA.Given() && kind.CrossSignable():
		return "", "this cluster runs k3s's own (or cross-signed) CAs; a root of yours does not chain to them: use --force to switch to it, or omit --root-ca to cross-sign"
	case op.CA.Given():
		return ModeCustom, ""
	case kind.CrossSignable():
		return ModeCrossSign, ""
	case kind == pki.KindCustom:
		return "", "this cluster uses a custom CA: give its root with --root-ca and --root-key, or --root-ca with --intermediate-ca and --intermediate-key"
	}
	return "", fmt.Sprintf("CA kinds differ between CA types (%v); rotate them with explicit material", current.Kinds())
}

// readCASet reads the primary's rotatable CA files (keys included, into
// memory only) in one round trip.
func readCASet(ctx context.Context, n *Node) (pki.CASet, error) {
	paths := make([]string, 0, len(pki.Files()))
	for _, f := range pki.Files() {
		paths = append(paths, path.Join(n.Layout.ServerTLSDir(), f))
	}
	files, err := k3s.ReadFiles(ctx, n.Conn, paths)
	if err != nil {
		return nil, fmt.Errorf("%s: read CA files: %w", n.Name, err)
	}
	byName := map[string][]byte{}
	for _, f := range pki.Files() {
		if got, ok := files[path.Join(n.Layout.ServerTLSDir(), f)]; ok {
			byName[f] = got.Data
		}
	}
	return pki.NewCASet(byName)
}

// validate checks the staged set against current with k3s's own rules,
// warning about what the lint finds. A forced new root (--force) is loaded
// whatever the rules say, as k3s's --force does.
func (r *loadRotation) validate(current pki.CASet) error {
	res := r.PKI.Validate(current, r.staged)
	for _, w := range res.Warnings {
		r.warn(nil, "lint: %s", w.String())
	}
	if !res.OK() && r.mode != ModeNewRoot {
		return r.refuse(problemStrings(res.Errors)...)
	}
	return nil
}

func problemStrings(ps []pki.Problem) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = "k3s would reject the new material: " + p.String()
	}
	return out
}

func fsMode(m uint32) fs.FileMode {
	if m == 0 {
		return 0o600
	}
	return fs.FileMode(m)
}

// serverCAFile is the bundle whose hash tokens pin.
func serverCAFile() string {
	t, _ := pki.CATypeByName("server")
	return t.CertFile
}
