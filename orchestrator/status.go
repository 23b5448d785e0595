package orchestrator

import (
	"encoding/json"
	"path"
	"time"
)

// ClusterStatus is what a cluster's primary records about fleetcert runs.
type ClusterStatus struct {
	Cluster    string    `json:"cluster"`
	Primary    string    `json:"primary"`
	Reachable  bool      `json:"reachable"`
	Error      string    `json:"error,omitempty"`
	Lock       *LockInfo `json:"lock,omitempty"`
	LockStale  bool      `json:"lockStale,omitempty"`
	Unfinished *RunState `json:"unfinished,omitempty"`
	LastRun    *RunState `json:"lastRun,omitempty"`
}

// NeedsAttention is true for an unfinished run or a stale lock: something
// a human (or a rerun) must finish.
func (s ClusterStatus) NeedsAttention() bool {
	return s.Unfinished != nil || s.LockStale
}

// StatusOf reads a cluster's status from its primary's facts snapshot.
func StatusOf(cluster string, primary *Node, now time.Time) ClusterStatus {
	st := ClusterStatus{Cluster: cluster, Primary: primary.Name}
	if primary.Err != nil {
		st.Error = primary.Err.Error()
		return st
	}
	st.Reachable = true
	current, last, err := readState(primary.Layout, primary.Snapshot)
	if err != nil {
		st.Error = err.Error()
	}
	st.Unfinished, st.LastRun = current, last
	if f, ok := primary.Snapshot.Files[path.Join(primary.Layout.FleetcertDir(), "lock")]; ok {
		var l LockInfo
		if err := json.Unmarshal(f.Data, &l); err == nil {
			st.Lock, st.LockStale = &l, l.Stale(now)
		} else {
			st.Error = "unreadable lock file: " + err.Error()
		}
	}
	return st
}
