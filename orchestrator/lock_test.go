package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/remote/remotetest"
)

func TestLockRefusesLiveHolderAndTakesStaleOne(t *testing.T) {
	ctx := context.Background()
	h := &remotetest.Local{}
	dir := filepath.Join(t.TempDir(), "fleetcert")
	now := time.Now()

	first, err := acquireLock(ctx, h, "c1", dir, nil, LockInfo{RunID: "run-a", Owner: controllerName(), PID: deadPID(t)}, now)
	if err != nil {
		t.Fatal(err)
	}
	held, _ := os.ReadFile(filepath.Join(dir, "lock"))
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("lock dir mode %v", st.Mode().Perm())
	}

	// Another run may not take a live holder's lease...
	live := LockInfo{RunID: "run-a", Owner: controllerName(), PID: os.Getppid(), Expires: now.Add(lockLease)}
	liveData, _ := json.Marshal(live)
	var lhe *lockHeldError
	if err := lockBlocks("c1", liveData, now); !errors.As(err, &lhe) || lhe.Holder.RunID != "run-a" {
		t.Fatalf("second run, live holder: want lockHeldError naming run-a, got %v", err)
	}
	// ...but takes over the lock of a holder on this controller that is
	// dead, whatever its run id: one that died between its lock and its
	// first run state left nothing to resume.
	if _, err := acquireLock(ctx, h, "c1", dir, held, LockInfo{RunID: "run-b"}, now); err != nil {
		t.Fatalf("dead holder, another run: %v", err)
	}
	first.Release(ctx) // no longer ours: must leave the new holder's lock alone
	if _, err := os.Stat(filepath.Join(dir, "lock")); err != nil {
		t.Fatalf("release of a lock that changed removed it: %v", err)
	}

	cur, _ := os.ReadFile(filepath.Join(dir, "lock"))
	later := now.Add(lockLease + time.Second)
	l, err := acquireLock(ctx, h, "c1", dir, cur, LockInfo{RunID: "run-c"}, later)
	if err != nil {
		t.Fatalf("stale lock not taken over: %v", err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "lock")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("lock still there after release: %v", err)
	}
}

func TestLockSwapDetectsConcurrentChange(t *testing.T) {
	ctx := context.Background()
	h := &remotetest.Local{}
	dir := t.TempDir()
	if err := swapLock(ctx, h, dir, nil, []byte(`{"runId":"x"}`)); err != nil {
		t.Fatal(err)
	}
	// Someone who saw no lock must not overwrite the one now there.
	if err := swapLock(ctx, h, dir, nil, []byte(`{"runId":"y"}`)); !errors.Is(err, errLockChanged) {
		t.Fatalf("got %v", err)
	}
	if err := swapLock(ctx, h, dir, []byte(`{"runId":"stale view"}`), nil); !errors.Is(err, errLockChanged) {
		t.Fatalf("release with a stale view: %v", err)
	}
}

// TestLockSameRunLiveHolderOnThisController: a second run adopts the run id
// of an unfinished run, so "same run id" alone does not mean "resuming a
// dead run": a holder that is a live process on this controller keeps its
// lock; once that process is gone, the resuming run takes it over.
func TestLockSameRunLiveHolderOnThisController(t *testing.T) {
	now := time.Now()
	live := LockInfo{RunID: "run-a", Owner: controllerName(), PID: os.Getppid(), Expires: now.Add(lockLease)}
	data, _ := json.Marshal(live)
	var lhe *lockHeldError
	if err := lockBlocks("c1", data, now); !errors.As(err, &lhe) {
		t.Fatalf("live holder on this controller, same run id: want lockHeldError, got %v", err)
	}

	dead := live
	dead.PID = deadPID(t)
	data, _ = json.Marshal(dead)
	if err := lockBlocks("c1", data, now); err != nil {
		t.Fatalf("dead holder, same run id: want takeover, got %v", err)
	}
	// A holder on another controller cannot be asked whether it lives: its
	// lease stands until it expires.
	other := dead
	other.Owner = "another-controller"
	data, _ = json.Marshal(other)
	if err := lockBlocks("c1", data, now); !errors.As(err, &lhe) {
		t.Fatalf("holder on another controller, same run id, live lease: want lockHeldError, got %v", err)
	}
	if err := lockBlocks("c1", data, now.Add(lockLease+time.Second)); err != nil {
		t.Fatalf("expired lease: want takeover, got %v", err)
	}
}

// deadPID is the pid of a process of this controller that has exited.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("sh", "-c", "exit 0")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}
