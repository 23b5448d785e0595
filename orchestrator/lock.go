package orchestrator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"syscall"
	"time"

	"github.com/fleetcert/fleetcert/remote"
)

// Lock lease timings: renewed every 30 s while a run lives, taken over by
// anyone once 2 minutes pass without renewal.
const (
	lockLease   = 2 * time.Minute
	lockRenewal = 30 * time.Second
)

// LockInfo is the content of a cluster lock file on the primary server.
type LockInfo struct {
	Owner   string    `json:"owner"` // controller host name
	PID     int       `json:"pid"`
	RunID   string    `json:"runId"`
	Command string    `json:"command"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
}

// Stale reports whether the lease ran out at time now.
func (l LockInfo) Stale(now time.Time) bool { return now.After(l.Expires) }

// errLockChanged means the lock file is not what the caller last saw:
// someone else took, renewed or released it in between.
var errLockChanged = errors.New("cluster lock changed underneath us")

// errLockBusy means another controller was swapping the lock at the same
// moment: nothing is known yet, try again.
var errLockBusy = errors.New("cluster lock busy")

// lockScript swaps the lock file only if its current content hashes to
// $expect (empty: only if absent). A mkdir mutex makes read-compare-write
// atomic with nothing but sh and coreutils on the node; a mutex older than a
// minute belongs to a controller that died mid-swap and is cleared.
const lockScript = `set -u
d=%s; f="$d/lock"; m="$d/lock.mutex"; expect=%s; op=%s
mkdir -p "$d" && chmod 700 "$d" || exit 1
if ! mkdir "$m" 2>/dev/null; then
  now=$(date +%%s); born=$(stat -c %%Y "$m" 2>/dev/null || echo "$now")
  [ $((now - born)) -gt 60 ] && rmdir "$m" 2>/dev/null
  mkdir "$m" 2>/dev/null || exit 75
fi
trap 'rmdir "$m"' EXIT
cur=""; [ -f "$f" ] && cur=$(sha256sum < "$f" | cut -d' ' -f1)
[ "$cur" = "$expect" ] || exit 73
if [ "$op" = release ]; then rm -f "$f"; exit 0; fi
t="$f.tmp.$$"; umask 077; cat > "$t" && sync "$t" && mv -f "$t" "$f"
`

// swapLock replaces (or with nil content, removes) the lock file in dir,
// provided its content still is prev (nil: absent).
func swapLock(ctx context.Context, h remote.Host, dir string, prev, next []byte) error {
	expect, op := "", "write"
	if prev != nil {
		sum := sha256.Sum256(prev)
		expect = hex.EncodeToString(sum[:])
	}
	if next == nil {
		op = "release"
	}
	script := fmt.Sprintf(lockScript, remote.Quote(dir), remote.Quote(expect), op)
	res, err := h.Run(ctx, script, next)
	if err != nil {
		return err
	}
	switch res.ExitCode {
	case 0:
		return nil
	case 73:
		return errLockChanged
	case 75:
		return errLockBusy
	default:
		return fmt.Errorf("cluster lock in %s: %w", dir, res.Err())
	}
}

// lockBlocks returns the error for a lock file (nil: none) that may not be
// taken over: a live lease, unless its holder is a dead process of this
// controller.
func lockBlocks(cluster string, current []byte, now time.Time) error {
	if current == nil {
		return nil
	}
	var held LockInfo
	if err := json.Unmarshal(current, &held); err != nil || held.Stale(now) {
		return nil
	}
	// A lock may be taken over before its lease runs out only when its
	// holder is known to be dead: a second run started while the first
	// still works adopts the same run id from the unfinished run state, and
	// must not take the cluster from it. Only a holder on this controller
	// can be asked; one elsewhere keeps its lease until it expires (or
	// --force-unlock). A dead holder's run id does not matter: one that died
	// between its lock and its first run state left nothing to resume, and
	// one that got further left a run state the rerun adopts.
	if !holderDead(held) {
		return &lockHeldError{Cluster: cluster, Holder: held}
	}
	return nil
}

// holderDead reports whether the lock's holder is a process of this
// controller that no longer runs.
func holderDead(l LockInfo) bool {
	if l.PID <= 0 || l.Owner != controllerName() {
		return false
	}
	if l.PID == os.Getpid() {
		return false
	}
	p, err := os.FindProcess(l.PID)
	if err != nil {
		return true
	}
	err = p.Signal(syscall.Signal(0))
	return err != nil && !errors.Is(err, syscall.EPERM)
}

// clusterLock is a held lock, renewed in the background until Release.
type clusterLock struct {
	h       remote.Host
	dir     string
	content []byte
	info    LockInfo
	stop    chan struct{}
	done    chan struct{}
	lost    chan error
}

// lockHeldError is a lock another live run holds.
type lockHeldError struct {
	Cluster string
	Holder  LockInfo
}

func (e *lockHeldError) Error() string {
	return fmt.Sprintf("cluster %s is locked by run %s (%s on %s, pid %d) until %s; wait for it, or use --force-unlock if that run is dead",
		e.Cluster, e.Holder.RunID, e.Holder.Command, e.Holder.Owner, e.Holder.PID, e.Holder.Expires.Format(time.RFC3339))
}

// acquireLock takes the cluster lock in dir on h. current is the lock file as
// last read (nil when absent). A live lease is refused (see lockBlocks); a
// stale one is taken over. --force-unlock removes a lock with forceUnlock
// before this is called.
func acquireLock(ctx context.Context, h remote.Host, cluster, dir string, current []byte, info LockInfo, now time.Time) (*clusterLock, error) {
	if err := lockBlocks(cluster, current, now); err != nil {
		return nil, err
	}
	info.Created, info.Expires = now, now.Add(lockLease)
	content, err := json.Marshal(info)
	if err != nil {
		return nil, err
	}
	if err := swapLock(ctx, h, dir, current, content); err != nil {
		if errors.Is(err, errLockChanged) || errors.Is(err, errLockBusy) {
			return nil, fmt.Errorf("cluster %s: another controller took the lock at the same moment; rerun later", cluster)
		}
		return nil, err
	}
	l := &clusterLock{h: h, dir: dir, content: content, info: info,
		stop: make(chan struct{}), done: make(chan struct{}), lost: make(chan error, 1)}
	go l.renew()
	return l, nil
}

// renew extends the lease every lockRenewal. A renewal that finds the lock
// changed reports it on Lost: the run must stop touching the cluster.
func (l *clusterLock) renew() {
	defer close(l.done)
	t := time.NewTicker(lockRenewal)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), lockRenewal)
			info := l.info
			info.Expires = time.Now().Add(lockLease)
			next, _ := json.Marshal(info)
			err := swapLock(ctx, l.h, l.dir, l.content, next)
			cancel()
			if errors.Is(err, errLockChanged) {
				l.lost <- fmt.Errorf("cluster lock was taken over by another run")
				return
			}
			if err == nil {
				l.content, l.info = next, info
				continue
			}
			// Busy or unreachable: retry at the next tick, unless the lease
			// runs out before then and another run may take the cluster.
			if time.Now().Add(lockRenewal).After(l.info.Expires) {
				l.lost <- fmt.Errorf("could not renew the cluster lock before its lease ran out: %w", err)
				return
			}
		}
	}
}

// Lost delivers an error if the lock was taken away during the run.
func (l *clusterLock) Lost() <-chan error { return l.lost }

// Release stops renewal and removes the lock, if it still is ours.
func (l *clusterLock) Release(ctx context.Context) error {
	close(l.stop)
	<-l.done
	return swapLock(ctx, l.h, l.dir, l.content, nil)
}

// forceUnlock removes a lock whatever it holds: the operator's decision
// that its run is dead.
func forceUnlock(ctx context.Context, h remote.Host, dir string) error {
	res, err := h.Run(ctx, "rm -f -- "+remote.Quote(path.Join(dir, "lock")), nil)
	if err != nil {
		return err
	}
	return res.Err()
}

// controllerName names this controller in lock files.
func controllerName() string {
	h, err := os.Hostname()
	if err != nil {
		return "unknown"
	}
	return h
}
