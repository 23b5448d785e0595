package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"

	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/pki"
)

// takeLock takes the cluster lock and opens (or resumes) the run state.
func (r *rotation) takeLock(ctx context.Context) error {
	run, primary := r.run, r.run.Primary()
	dir := primary.Layout.FleetcertDir()
	if r.opts.ForceUnlock && r.lockFile != nil {
		err := run.Wet(primary, "remove the cluster lock (--force-unlock)", func() error {
			return ForceUnlock(ctx, primary.Conn, dir)
		})
		if err != nil {
			return err
		}
		r.lockFile = nil
	}
	if r.opts.DryRun {
		if err := lockBlocks(run.Cluster.Name, r.lockFile, run.RunID, r.opts.now()); err != nil {
			return err
		}
		return run.Wet(primary, "take the cluster lock "+path.Join(dir, "lock"), func() error { return nil })
	}
	info := LockInfo{Owner: controllerName(), PID: os.Getpid(), RunID: run.RunID, Command: r.opts.Command}
	var lock *ClusterLock
	err := run.Wet(primary, "take the cluster lock "+path.Join(dir, "lock"), func() error {
		var err error
		lock, err = AcquireLock(ctx, primary.Conn, run.Cluster.Name, dir, r.lockFile, info, r.opts.now())
		return err
	})
	if err != nil {
		var held *LockHeldError
		if errors.As(err, &held) {
			return held
		}
		return err
	}
	r.lock = lock
	if r.prior != nil {
		r.state = r.prior
		if r.opts.Abandon {
			r.run.Info(primary, "abandoning unfinished run %s", r.prior.RunID)
			return nil
		}
	} else {
		r.state = &RunState{RunID: run.RunID, Command: r.opts.Command, Started: r.opts.now(), Nodes: map[string]NodeStep{}}
	}
	if r.state.Nodes == nil {
		r.state.Nodes = map[string]NodeStep{}
	}
	if !r.state.Loaded {
		r.state.Mode, r.state.OldHash, r.state.TargetHash = string(r.mode), r.served, r.target
	}
	return r.saveState(ctx)
}

// material reads the primary's CA files, makes the new set for the mode,
// validates it with k3s's own rules and computes the target hash. A
// resumed run that already loaded its material keeps its target; one that
// had not loaded yet makes new material (no token pins the old attempt's
// hash: tokens are only rewritten once the material is loaded).
func (r *rotation) material(ctx context.Context) error {
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
	if err := r.chooseMode(); err != nil {
		return err
	}
	staged, err := r.makeMaterial(current)
	if err != nil {
		return err
	}
	r.staged = staged.Changed(current)
	if len(r.staged) == 0 {
		return &RefusedError{Cluster: r.run.Cluster.Name, Problems: []string{"the new material is identical to the current one: nothing to rotate"}}
	}
	res := r.opts.PKI.Validate(current, r.staged)
	for _, w := range res.Warnings {
		r.warn(nil, "lint: %s", w.String())
	}
	if !res.OK() && r.mode != ModeNewRoot {
		return &RefusedError{Cluster: r.run.Cluster.Name, Problems: problemStrings(res.Errors)}
	}
	r.target = pki.HashCA(r.staged.Overlay(current)[serverCAFile()])
	r.run.Info(primary, "%s: %d files to stage, token hash %s -> %s", r.mode, len(r.staged), short(r.served), short(r.target))
	return nil
}

// chooseMode decides how to rotate from the primary's files and the flags.
func (r *rotation) chooseMode() error {
	if r.isSAKey() {
		r.mode = ModeServiceKey
		return nil
	}
	kind := r.current.Kind()
	refuse := func(msg string) error {
		return &RefusedError{Cluster: r.run.Cluster.Name, Problems: []string{msg}}
	}
	switch {
	case r.opts.Force:
		r.mode = ModeNewRoot
	case kind == pki.KindMissing:
		return refuse("the primary's CA files are missing or unreadable")
	case r.opts.CA.Given():
		if kind.CrossSignable() {
			return refuse("this cluster runs k3s's own (or cross-signed) CAs; a root of yours does not chain to them: use --force to switch to it, or omit --root-ca to cross-sign")
		}
		r.mode = ModeCustom
	case kind.CrossSignable():
		r.mode = ModeCrossSign
	case kind == pki.KindCustom:
		return refuse("this cluster uses a custom CA: give its root with --root-ca and --root-key, or --root-ca with --intermediate-ca and --intermediate-key")
	default:
		return refuse(fmt.Sprintf("CA kinds differ between CA types (%v); rotate them with explicit material", r.current.Kinds()))
	}
	return nil
}

func (r *rotation) makeMaterial(current pki.CASet) (pki.CASet, error) {
	if r.opts.Material != nil {
		return r.opts.Material(r.mode, current)
	}
	env := r.opts.PKI
	switch r.mode {
	case ModeServiceKey:
		sk, err := env.RotateServiceKey(current[pki.ServiceKeyFile], r.opts.KeepKeys)
		return pki.CASet{pki.ServiceKeyFile: sk}, err
	case ModeCrossSign:
		return env.CrossSign(current)
	case ModeCustom, ModeNewRoot:
		if !r.opts.CA.Given() {
			return env.NewRoot(false)
		}
		in := r.opts.CA
		c, err := env.GenerateCustom(pki.CustomInput{Root: in.Root, RootKey: in.RootKey,
			Intermediate: in.Intermediate, IntermediateKey: in.IntermediateKey})
		if err != nil {
			return nil, err
		}
		delete(c.Set, pki.ServiceKeyFile) // rotate-sa-key's job
		if r.mode == ModeNewRoot {
			for _, t := range pki.CATypes {
				if t.Etcd {
					delete(c.Set, t.CertFile)
					delete(c.Set, t.KeyFile)
				}
			}
		}
		return c.Set, nil
	}
	return nil, fmt.Errorf("unknown mode %q", r.mode)
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
